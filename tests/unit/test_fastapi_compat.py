"""Serve's class-based FastAPI ingress (the Router) works with the installed fastapi (0.137+ breaks it)."""

from __future__ import annotations

from fastapi import FastAPI
from ray.serve._private.http_util import make_fastapi_class_based_view


def test_serve_class_based_view_keeps_the_routes_and_binds_self():
    app = FastAPI()

    class Ingress:
        @app.post("/v1/echo")
        async def echo(self, body: dict) -> dict:
            return body

    make_fastapi_class_based_view(app, Ingress)
    routes = {route.path: route for route in app.routes if hasattr(route, "dependant")}
    assert "/v1/echo" in routes, f"the class's route is gone: {sorted(routes)}"
    params = routes["/v1/echo"].dependant
    assert "self" not in {p.name for p in params.query_params + params.body_params}
