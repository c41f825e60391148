"""The plans service's HTTP API (FastAPI): devices, profile runs, cost models and plans under /v1,
a page for people at /, the OpenAPI document at /openapi.json.

Every error is a JSON body `{"error": ...}` with a 4xx status (503 when the database is down):
validation happens before any write, and each write is one transaction, so a refused request
leaves nothing behind. Plans and cost models are immutable and named by their digest; publishing
one twice answers with the stored row (`created: false`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi import Path as FastPath
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from hyinf import __version__
from hyinf.canonical import digest
from hyinf.errors import HyinfError, PlanError
from hyinf.graph.ir_json import graph_from_json
from hyinf.planner.document import PlanDocument, settings_key
from hyinf.plans_db import catalog
from hyinf.plans_db.schema import CostModelRow, Device, PlanRow
from hyinf.plans_db.store import Database, DatabaseError, Provenance
from hyinf.plans_db.tokens import Holder
from hyinf.profiler.cost_model import FORMAT_VERSION, LearnedCosts
from hyinf.service import page, schemas
from hyinf.service.auth import require
from hyinf.service.costs import fit_class
from hyinf.service.documents import Documents, KeptPlans
from hyinf.service.limits import BodyLimit
from hyinf.service.search import NotFound, check_fits, match, search

DB_VAR, PUBLIC_VAR = "HYINF_SERVE_DB", "HYINF_SERVE_PUBLIC_READ"
NO_NUL = r"^[^\x00]*$"  # PostgreSQL's text holds no NUL characters
RowId = Annotated[int, FastPath(ge=1, le=2**31 - 1, description="a row id")]  # the databases' integer ids
Reader = Annotated[Holder, Depends(require("read"))]
Publisher = Annotated[Holder, Depends(require("publish"))]
Admin = Annotated[Holder, Depends(require("admin"))]


def _error(status: int, message: str, **details: Any) -> JSONResponse:
    return JSONResponse(jsonable_encoder({"error": message, **details}), status_code=status)


def _provenance(row: PlanRow | CostModelRow) -> dict[str, Any]:
    return {"publisher": row.publisher, "machine": row.machine, "hyinf_version": row.hyinf_version,
            "created_at": row.created_at, "retracted": row.retracted_at is not None}


def device_out(d: Device) -> schemas.DeviceOut:
    return schemas.DeviceOut(id=d.id, key=d.key, device_class=d.device_class, created_at=d.created_at, kind=d.kind, name=d.name,
                             cores=d.cores, driver=d.driver, torch_version=d.torch_version, onnxruntime_version=d.onnxruntime_version)


def plan_out(p: PlanRow, d: Device) -> schemas.PlanOut:
    body = p.body
    return schemas.PlanOut(id=p.id, digest=p.digest, model_fingerprint=p.model_fingerprint, model_name=str(body["model"].get("name", "")),
                           settings_key=p.settings_key, settings=body["settings"], device_key=d.key, device_class=d.device_class,
                           cost_model_id=p.cost_model_id, predicted_s=body.get("predicted_s", {}), **_provenance(p))


def cost_model_out(m: CostModelRow, d: Device) -> schemas.CostModelOut:
    return schemas.CostModelOut(id=m.id, digest=m.digest, device_key=d.key, device_class=d.device_class, backend=m.backend,
                                format_version=m.format_version, run_ids=list(m.run_ids), metrics=m.metrics, **_provenance(m))


def create_app(db: Database, *, public_read: bool = True) -> FastAPI:
    """The service over an opened (migrated) database."""
    documents = Documents(db)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async def sweep() -> None:
            while True:
                await asyncio.sleep(documents.ttl)
                with contextlib.suppress(DatabaseError):  # lookups read the database themselves meanwhile
                    await run_in_threadpool(documents.sweep)

        task = asyncio.create_task(sweep())
        yield
        task.cancel()

    app = FastAPI(title="hyinf plans service", version=__version__, lifespan=lifespan,
                  description="Plans and cost models for occlusion explanations, shared by a fleet of machines.")
    app.state.db, app.state.public_read = db, public_read
    app.add_middleware(BodyLimit)
    app.add_middleware(KeptPlans, documents=documents, public_read=public_read)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, e: NotFound) -> JSONResponse:
        return _error(404, str(e), **e.details)

    @app.exception_handler(DatabaseError)
    async def _database(_: Request, e: DatabaseError) -> JSONResponse:
        return _error(503, f"the database is unavailable: {e}")

    @app.exception_handler(HyinfError)
    async def _refused(_: Request, e: HyinfError) -> JSONResponse:
        return _error(422, str(e))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        response = _error(e.status_code, str(e.detail))
        response.headers.update(e.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}" for err in e.errors()[:5]]
        return _error(422, "invalid request: " + "; ".join(problems), details=[{k: v for k, v in err.items() if k != "ctx"} for err in e.errors()[:20]])

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__, "schema": db.revision}

    @app.get("/v1/devices")
    def devices(_: Reader) -> list[schemas.DeviceOut]:
        return [device_out(d) for d in catalog.devices(db)]

    @app.get("/v1/profile-runs")
    def profile_runs(_: Reader, device_class: Annotated[str | None, Query(max_length=220, pattern=NO_NUL)] = None) -> list[schemas.ProfileRunOut]:
        return [schemas.ProfileRunOut(id=r.id, device_class=c, backend=r.backend, threads=r.threads, quick=r.quick,
                                      hyinf_version=r.hyinf_version, started_at=r.started_at, finished_at=r.finished_at)
                for r, c in catalog.profile_runs(db, device_class)]

    @app.post("/v1/profile-runs", status_code=201)
    def publish_run(run: schemas.ProfileRunIn, who: Publisher) -> dict[str, int]:
        return {"id": db.add_run(run.device.fingerprint(), run.backend, run.threads, run.quick, run.settings,
                                 [s.model_dump() for s in run.samples], who.name)}

    @app.get("/v1/cost-models")
    def cost_models(_: Reader, device_class: Annotated[str | None, Query(max_length=220, pattern=NO_NUL)] = None,
                    backend: schemas.Backend | None = None) -> list[schemas.CostModelOut]:
        return [cost_model_out(m, d) for m, d in catalog.cost_models(db, device_class, backend)]

    @app.get("/v1/cost-models/{model_id}")
    def get_cost_model(model_id: RowId, _: Reader) -> dict[str, Any]:
        found = catalog.cost_model(db, model_id)
        if found is None:
            raise HTTPException(404, f"there is no cost model {model_id}")
        return {"model": cost_model_out(*found), "body": found[0].body}

    @app.post("/v1/cost-models", status_code=201, responses={200: {"model": schemas.Published}})
    def publish_cost_model(model: schemas.CostModelPublish, who: Publisher, response: Response) -> schemas.Published:
        if model.format_version != FORMAT_VERSION:
            raise PlanError(f"cost model format version {model.format_version} is not the {FORMAT_VERSION} this server reads")
        try:
            LearnedCosts.from_body(model.body)
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise PlanError(f"the cost model's body does not decode ({type(e).__name__}: {str(e)[:200]})") from None
        fp = model.device.fingerprint()
        known = {r.id for r, c in catalog.profile_runs(db, fp.device_class)}
        missing = sorted(set(model.run_ids) - known)
        if missing:
            raise PlanError(f"the lineage names profile runs this server does not hold for {fp.device_class}: {missing[:5]}")
        model_id, created = db.publish_cost_model(db.device_id(fp), model.backend, model.format_version, model.run_ids, model.body,
                                                  model.metrics, Provenance(publisher=who.name))
        response.status_code = 201 if created else 200
        return schemas.Published(id=model_id, digest=digest(model.body), created=created)

    @app.post("/v1/cost-models/fit", status_code=201, responses={200: {"model": schemas.Published}})
    def fit_cost_model(request: schemas.FitIn, who: Publisher, response: Response) -> schemas.Published:
        model_id, created, body = fit_class(db, request.device_class, request.backend, who.name)
        response.status_code = 201 if created else 200
        return schemas.Published(id=model_id, digest=digest(body), created=created)

    @app.delete("/v1/cost-models/{model_id}")
    def retract_cost_model(model_id: RowId, _: Admin) -> schemas.Retracted:
        done = catalog.retract(db, CostModelRow, model_id)
        if done is None:
            raise HTTPException(404, f"there is no cost model {model_id}")
        return schemas.Retracted(id=model_id, retracted=done)

    @app.get("/v1/plans")
    def list_plans(_: Reader, fingerprint: Annotated[str | None, Query(max_length=64, pattern=NO_NUL)] = None,
                   settings: Annotated[str | None, Query(max_length=64, pattern=NO_NUL, description="a settings key")] = None,
                   device: Annotated[str | None, Query(max_length=64, pattern=NO_NUL, description="a device key")] = None,
                   device_class: Annotated[str | None, Query(max_length=220, pattern=NO_NUL)] = None) -> list[schemas.PlanOut]:
        return [plan_out(p, d) for p, d in catalog.plans(db, fingerprint=fingerprint, settings_key=settings, device_key=device,
                                                         device_class=device_class)]

    @app.get("/v1/plans/{plan_id}", responses={200: {"description": "the plan document; its digest is the ETag"},
                                               304: {"description": "unchanged (If-None-Match)"}})
    async def get_plan(plan_id: RowId, request: Request, _: Reader) -> Response:
        served = documents.fresh(plan_id) or await run_in_threadpool(documents.load, plan_id)
        if served is None:
            raise HTTPException(404, f"there is no plan {plan_id}")
        if served.retracted:
            raise HTTPException(410, f"plan {plan_id} was retracted")
        tag = f'"{served.digest}"'
        if request.headers.get("if-none-match") == tag:
            return Response(status_code=304, headers={"ETag": tag})
        return Response(served.body, media_type="application/json", headers={"ETag": tag})

    @app.post("/v1/plans", status_code=201, responses={200: {"model": schemas.Published}})
    def publish_plan(body: schemas.PlanPublish, who: Publisher, response: Response) -> schemas.Published:
        document = PlanDocument.parse(json.dumps(body.document), "the published plan")
        if body.structure is not None:
            check_fits(document, graph_from_json(body.structure))
        # The document describes the publisher's own cost model; only plans searched here link one of the server's.
        plan_id, created = db.publish_plan(document.model_fingerprint, settings_key(document.settings), document.device,
                                           None, dict(document.body), Provenance(publisher=who.name))
        response.status_code = 201 if created else 200
        return schemas.Published(id=plan_id, digest=digest(dict(document.body)), created=created)

    @app.post("/v1/plans/search")
    def search_plan(request: schemas.SearchIn, who: Publisher, response: Response) -> schemas.MatchOut:
        if (request.device is None) == (request.device_class is None):
            raise PlanError("give the device as a fingerprint (device) or as a class (device_class), not both or neither")
        graph = graph_from_json(request.structure)
        if list(graph.input_node.shape[2:]) != request.settings.image_size:
            raise PlanError(f"the structure takes {tuple(graph.input_node.shape[2:])} images, not {tuple(request.settings.image_size)}")
        found = search(db, graph, request.settings.model_dump(exclude_none=True), request.device.fingerprint() if request.device else None,
                       request.device_class, request.strategy, who.name)
        response.status_code = 201 if found.created else 200
        return schemas.MatchOut(match="exact", differs=[], plan=plan_out(found.plan, found.device), document=found.plan.body)

    @app.post("/v1/plans/match", responses={404: {"description": "a miss, naming what differed and the closest plans"}})
    def match_plan(request: schemas.MatchIn, _: Reader) -> schemas.MatchOut:
        kind, differs, row, dev = match(db, request.fingerprint, request.settings.model_dump(exclude_none=True), request.device.fingerprint())
        return schemas.MatchOut(match=kind, differs=differs, plan=plan_out(row, dev), document=row.body)

    @app.delete("/v1/plans/{plan_id}")
    def retract_plan(plan_id: RowId, _: Admin) -> schemas.Retracted:
        done = catalog.retract(db, PlanRow, plan_id)
        documents.forget(plan_id)
        if done is None:
            raise HTTPException(404, f"there is no plan {plan_id}")
        return schemas.Retracted(id=plan_id, retracted=done)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index(_: Reader) -> str:
        return page.index(db)

    @app.get("/plans/{plan_id}", response_class=HTMLResponse, include_in_schema=False)
    def plan_page(plan_id: RowId, _: Reader) -> str:
        found = catalog.plan(db, plan_id)
        if found is None:
            raise HTTPException(404, f"there is no plan {plan_id}")
        return page.plan(*found)

    return app


def from_environment() -> FastAPI:
    """The app for a uvicorn worker process: `hyinf serve` passes its settings in the environment."""
    return create_app(Database(os.environ[DB_VAR]), public_read=os.environ.get(PUBLIC_VAR, "1") == "1")

