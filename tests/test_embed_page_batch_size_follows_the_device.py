"""The Embed page's batch size defaults to "automatic" (0 → :func:`clipcal.embed.default_batch_size` of the device:
16 on the CPU, 64 on a GPU), as the CLI-less paths do; it used to send 64 on every device (issue 13.3)."""

from __future__ import annotations

from pages.ui import jobs
from tests.test_app_setup_pages import _no_exception


def test_batch_size_is_automatic_unless_set(app, seeded_embeddings, monkeypatch):
    sent = []
    monkeypatch.setattr(jobs, "start_embedding", lambda spec, backbone, **kw: sent.append(kw))
    at = app("embed")
    _no_exception(at)
    assert at.number_input(key="embed.batch").value == 0
    at.button(key="embed.start").click().run()
    at.number_input(key="embed.batch").set_value(32).run()
    at.button(key="embed.start").click().run()
    _no_exception(at)
    assert [kw["batch_size"] for kw in sent] == [None, 32]
