"""The shared model slot never closes a model someone is using (issue 15: concept probing could find the shared
model closed under it by a finishing job), loads each model once, and closes an unused model before loading the
next (at most one resident). Threads are ordered with events, not sleeps."""

from __future__ import annotations

import threading
from types import SimpleNamespace as NS

import pytest

from clipcal.model_slot import ModelSlot


class FakeModel:
    """Stands in for a Backbone: ``close()`` drops the weights, and using a closed model fails like the real one
    (``self.model`` is ``None``)."""

    def __init__(self, spec: str):
        self.spec, self.model, self.closes = spec, object(), 0

    def encode(self) -> str:
        if self.model is None:
            raise AttributeError("'NoneType' object is not callable (the model was closed)")
        return f"encoded by {self.spec}"

    def close(self) -> None:
        self.model, self.closes = None, self.closes + 1


def fake_slot() -> tuple[ModelSlot, list[FakeModel]]:
    made: list[FakeModel] = []

    def loader(spec, device, precision):
        made.append(FakeModel(spec))
        return made[-1]

    return ModelSlot(loader), made


def _thread(target) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run():
        try:
            out["value"] = target()
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            out["error"] = err

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


@pytest.mark.parametrize("job_ends_with", ["close", "switch"])
def test_probe_completes_while_a_job_finishes_and_closes_the_model(job_ends_with):
    """A probe holds the shared model; meanwhile a job that used it finishes and closes the slot (or switches
    it to another backbone). The probe's model stays open until the probe is done, then it is closed once."""
    slot, made = fake_slot()
    probing, job_finished = threading.Event(), threading.Event()
    with slot.lease("A"):  # e.g. the Embed page's job loaded it
        pass

    def probe():
        with slot.peek("A") as model:
            probing.set()
            assert job_finished.wait(10)
            return model.encode()

    probe_thread, probe_out = _thread(probe)
    assert probing.wait(10)

    def job():
        with slot.lease("A") as model:
            model.encode()
        if job_ends_with == "close":
            slot.close()
        else:
            with slot.lease("B") as other:
                other.encode()

    job_thread, job_out = _thread(job)
    job_thread.join(10)
    assert not job_thread.is_alive() and "error" not in job_out, job_out  # the job never waits on the probe
    assert made[0].closes == 0, "the model was closed while the probe still used it"
    job_finished.set()
    probe_thread.join(10)
    assert probe_out.get("value") == "encoded by A", probe_out.get("error")
    assert made[0].closes == 1  # closed by the probe's release, exactly once
    assert slot.resident() == (0 if job_ends_with == "close" else 1)


def test_an_unused_model_is_closed_before_the_next_one_loads():
    closed_at_load: list[int] = []
    slot, made = fake_slot()
    loader = slot._loader

    def watching(*args):
        closed_at_load.append(sum(m.model is not None for m in made))
        return loader(*args)

    slot._loader = watching
    with slot.lease("A"):
        pass
    with slot.lease("B") as b:
        assert b.spec == "B"
    assert closed_at_load == [0, 0]  # when B loaded, A was already closed: one model resident at a time
    assert made[0].closes == 1 and slot.resident() == 1 and slot.key == ("B", "auto", "auto")


def test_concurrent_leases_of_one_model_load_it_once():
    slot, made = fake_slot()
    go = threading.Barrier(4)

    def use():
        go.wait(10)
        with slot.lease("A") as model:
            return model

    threads = [_thread(use) for _ in range(4)]
    for t, _ in threads:
        t.join(10)
    assert {id(out["value"]) for _, out in threads} == {id(made[0])} and len(made) == 1 and slot.loads == 1


def test_peek_never_loads_and_a_failed_load_leaves_the_slot_empty():
    def broken(spec, device, precision):
        raise RuntimeError("no weights")

    slot = ModelSlot(broken)
    with slot.peek("A") as model:
        assert model is None
    with pytest.raises(RuntimeError):
        with slot.lease("A"):
            pass
    assert slot.key is None and slot.resident() == 0


def test_the_cav_probe_on_the_spurious_page_holds_a_lease(monkeypatch):
    """The Spurious page's concept job takes the shared model through a lease: a job that closes the slot while
    the probe embeds its concept images does not close the model under it."""
    import clipcal.cav as cav
    from pages.ui import resources, spurious

    slot, made = fake_slot()
    monkeypatch.setattr(resources, "model_slot", lambda: slot)
    monkeypatch.setattr(resources, "load_bench", lambda spec: None)
    monkeypatch.setattr(resources, "get_run", lambda run_id: None)
    monkeypatch.setattr(resources, "run_feature_data", lambda run, bench, spec=None: NS(features=None))
    monkeypatch.setattr(resources, "get_store", lambda: None)
    monkeypatch.setattr(spurious.views, "method_result", lambda run, method: None)
    with slot.lease("A"):
        pass
    probing, job_finished = threading.Event(), threading.Event()

    def report_job(fd, result, source, counter, backbone=None, **kwargs):
        probing.set()
        assert job_finished.wait(10)
        return backbone.encode()

    monkeypatch.setattr(cav, "concept_report_job", report_job)
    probe_thread, probe_out = _thread(lambda: spurious._cav_worker("run", {}, "A", "erm", {}, None, 4))
    assert probing.wait(10)
    slot.close()  # e.g. a job that ends by releasing the model
    assert made[0].closes == 0
    job_finished.set()
    probe_thread.join(10)
    assert probe_out.get("value") == "encoded by A", probe_out.get("error")
    assert made[0].closes == 1
