"""The HTTP server: ``behavior-lm serve RUN_DIR`` keeps each user's recent events in memory, takes
new events and answers top-k requests with the run's own ``pipeline("next-behavior")``, so a
served history is serialized and scored exactly as training and evaluation did.

- ``GET /health``: model, catalogue size, users held;
- ``POST /events``: one event ``{"user", "item", "behavior"?, "timestamp"?}`` or ``{"events": [...]}``;
- ``POST /recommend``: ``{"user": ...}`` (the held history) or ``{"history": [...]}``, with
  ``top_k``, ``behavior``, ``exclude_seen``, ``return_behaviors`` as in the pipeline.

Bad requests get a 4xx with a message (422 for a malformed body, 400 for a value the model
cannot take, 404 for a user with no events), never a 500. OpenAPI docs at ``/docs``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from behavior_lm.data.streams import context_events
from behavior_lm.inference.pipelines import check_item_id
from behavior_lm.serving.batcher import MicroBatcher
from behavior_lm.serving.state import HistoryStore, StoredEvent
from behavior_lm.version import __version__

ItemId = str | int


class Event(BaseModel):
    """One event of one user."""

    model_config = ConfigDict(extra="forbid")
    user: str = Field(min_length=1, max_length=1000)
    item: ItemId
    behavior: str | None = Field(default=None, max_length=200)
    timestamp: int | None = Field(default=None, description="Unix seconds (needed by models trained with time gaps)")


class Events(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[Event] = Field(min_length=1, max_length=10_000)


class HistoryEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item: ItemId
    behavior: str | None = None
    timestamp: int | None = None


class RecommendRequest(BaseModel):
    """Exactly one of ``user`` (the held history) and ``history`` (given here)."""

    model_config = ConfigDict(extra="forbid")
    user: str | None = Field(default=None, min_length=1, max_length=1000)
    history: list[HistoryEvent] | None = Field(default=None, max_length=100_000)
    top_k: int = Field(default=10, ge=1, le=10_000)
    behavior: str | None = None
    exclude_seen: bool | None = None
    return_behaviors: bool = False

    @model_validator(mode="after")
    def one_source(self) -> "RecommendRequest":
        if (self.user is None) == (self.history is None):
            raise ValueError("give exactly one of 'user' (a user whose events were posted) and 'history'")
        return self


def create_app(model: str, state_file: str | Path | None = None) -> FastAPI:
    """The app for one run directory (or Hub id). ``state_file``: journal of the held events,
    replayed on start so a restarted server keeps its users' histories."""
    from transformers import pipeline

    from behavior_lm.inference.pipelines import register
    from behavior_lm.models import rnn  # noqa: F401  (registers GRU/LSTM with the Auto classes)

    register()
    pipe = pipeline("next-behavior", model=str(model))
    fmt = pipe.stream_format()
    keep = context_events(pipe.max_length, fmt)
    store = HistoryStore(keep, Path(state_file) if state_file else None)
    behaviors = set(pipe.behavior_names()) if fmt.behaviors else set()
    needs_time = fmt.time_gaps or fmt.session_gap is not None
    # concurrent requests share one padded forward (the pipeline's batched call)
    batcher = MicroBatcher(lambda histories, **options: pipe(histories, batch_size=len(histories), **options))

    app = FastAPI(title="behavior-lm", version=__version__,
                  description=f"Next-behavior prediction with {model}: post events, ask for the top-k.")

    @app.exception_handler(ValueError)
    async def bad_value(_request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(exc)})

    def check(event: Event | HistoryEvent) -> None:
        check_item_id(event.item)                        # the pipeline's rule: one token, no controls
        if fmt.behaviors and event.behavior not in behaviors:
            raise ValueError(f"this model reads (item, behavior) events; behavior {event.behavior!r} is not "
                             f"one of {sorted(behaviors)}")
        if needs_time and event.timestamp is None:
            raise ValueError("this model was trained with time-gap/session tokens: every event needs "
                             "its 'timestamp' (Unix seconds)")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": str(model), "version": __version__, "users": len(store),
                "events_kept_per_user": keep, "behaviors": sorted(behaviors) or None,
                "needs_timestamps": needs_time}

    @app.post("/events")
    def post_events(body: Event | Events) -> dict[str, Any]:
        events = body.events if isinstance(body, Events) else [body]
        for e in events:
            check(e)
        store.add([(e.user, StoredEvent(str(e.item), e.behavior, e.timestamp)) for e in events])
        unknown = sorted({str(e.item) for e in events if not pipe.knows_item(str(e.item))})
        return {"accepted": len(events), "unknown_items": unknown[:100], "unknown_item_count": len(unknown)}

    @app.post("/recommend")
    def recommend(body: RecommendRequest) -> dict[str, Any]:
        if body.user is not None:
            held = store.get(body.user)
            if held is None:
                raise HTTPException(status_code=404, detail=f"no events for user {body.user!r}; "
                                                            "POST /events first, or pass 'history'")
            events = [(e.item, e.behavior, e.timestamp) for e in held]
        else:
            for e in body.history:
                check(e)
            events = [(str(e.item), e.behavior, e.timestamp) for e in body.history]
        options: dict[str, Any] = {"top_k": body.top_k, "return_behaviors": body.return_behaviors}
        if body.behavior is not None:
            options["behavior"] = body.behavior
        if body.exclude_seen is not None:
            options["exclude_seen"] = body.exclude_seen
        history = [(i, b, t) if needs_time else (i, b) for i, b, t in events]
        out = batcher.submit(history, options)
        items, behavior_dist = (out["items"], out["behaviors"]) if body.return_behaviors else (out, None)
        reply: dict[str, Any] = {"items": items, "history_length": min(len(events), keep)}
        if body.user is not None:
            reply["user"] = body.user
        if behavior_dist is not None:
            reply["behaviors"] = behavior_dist
        return reply

    return app


def serve(model: str, *, host: str = "127.0.0.1", port: int = 8000, state_file: str | None = None) -> None:
    import uvicorn

    uvicorn.run(create_app(model, state_file), host=host, port=port, log_level="warning")
