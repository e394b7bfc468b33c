"""A person in the loop: a worker asks a question about its job (fenced by
its worker JWT and epoch) and waits for the answer; an operator answers it.

While a question is open, ``GET /jobs/{id}`` shows it as ``waiting_for``;
asking appends a ``job.question`` event to the job's session, answering (or
the question timing out) a ``job.answer`` event."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from corral.api.deps import Reader, Svc, Worker, Writer
from corral.api.ids import JobId
from corral.auth import WorkerClaims
from corral.models import AnswerCreate, Question, WaitingFor
from corral.protocol import AnswerWait, QuestionAsk, paths, topics
from corral.services import Services

router = APIRouter(tags=["questions"])

# A waiting poll reads the question again this often even if the bus said
# nothing (an answer given on another replica is announced; this is the net).
RECHECK_SECONDS = 5.0


async def ask(svc: Services, claims: WorkerClaims, body: QuestionAsk) -> Question:
    return await svc.store.questions.ask(
        claims, body.question_id, body.question, body.options, body.timeout
    )


def question_in(details: dict[str, object]) -> QuestionAsk:
    """The question ``PUT /worker/state`` carries in ``details`` with
    ``requires_action`` (refused with 422 like a body of its own)."""
    try:
        return QuestionAsk.model_validate(details)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", "details", *e["loc"])} for e in exc.errors()]
        raise RequestValidationError(errors) from exc


@router.post(paths.WORKER_QUESTIONS, response_model=Question)
async def worker_ask(body: QuestionAsk, svc: Svc, claims: Worker) -> Question:
    """Ask a person a question about this job (idempotent by
    ``question_id``). Wait for the answer with ``POST
    /worker/questions/{id}/wait``; the job's output-stall guards pause."""
    return await ask(svc, claims, body)


@router.post(paths.WORKER_QUESTION_WAIT, response_model=Question)
async def worker_wait(
    question_id: Annotated[str, Path(pattern=paths.QUESTION_ID)],
    body: AnswerWait,
    request: Request,
    svc: Svc,
    claims: Worker,
) -> Question:
    """Long-poll (up to ``wait`` seconds) until the question is answered or
    expires; answers ``open`` at the end of the wait. A question past its
    timeout answers ``expired``: no answer came."""
    deadline = time.monotonic() + body.wait
    while True:
        # Subscribed before the read: an answer between the two is heard.
        with svc.store.bus.subscribe(
            topics.session(claims.session_id), topics.SERVER_STOPPING, maxsize=64
        ) as sub:
            question = await svc.store.questions.poll(claims, question_id)
            remaining = deadline - time.monotonic()
            stop = svc.stopping or await request.is_disconnected()
            if question.state != "open" or remaining <= 0 or stop:
                return question
            if question.expires_at is not None:
                until_expiry = question.expires_at.timestamp() - time.time()
                remaining = min(remaining, max(until_expiry, 0.0) + 0.01)
            await sub.get(timeout=min(remaining, RECHECK_SECONDS))


class OpenQuestion(WaitingFor):
    """A question waiting on a person, with the job that asked it."""

    job_id: str


@router.get("/questions", response_model=list[OpenQuestion])
async def open_questions(
    svc: Svc, who: Reader, limit: Annotated[int, Query(ge=1, le=1000)] = 200
) -> list[OpenQuestion]:
    """Every question waiting on a person's answer, oldest first (the
    dashboard's "Needs you"); answer with ``POST /jobs/{job_id}/answer``."""
    return [
        OpenQuestion(job_id=job_id, **q.model_dump())
        for job_id, q in await svc.store.questions.pending(limit)
    ]


@router.post("/jobs/{job_id}/answer", response_model=Question)
async def answer(body: AnswerCreate, svc: Svc, who: Writer, job_id: JobId) -> Question:
    """Answer the question the job waits on (``waiting_for``); 409 when it
    waits on none. The worker's waiting call returns the text."""
    return await svc.store.questions.answer(
        job_id, body.text, by=who.name, question_id=body.question_id
    )
