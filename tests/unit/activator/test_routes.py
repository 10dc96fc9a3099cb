"""The route table: what each path means, for the relay and the activator's own answers alike."""

from __future__ import annotations

import pytest

from activator.errors import MethodNotAllowed, NotFound
from activator.routes import (
    ROUTES,
    Endpoint,
    Guard,
    Match,
    guard,
    model_route,
    resolve,
    split,
    target,
)


@pytest.mark.parametrize(
    ("method", "path", "match"),
    [
        ("GET", "/v2/health/live", Match(Endpoint.LIVE)),
        ("GET", "/v2/health/ready", Match(Endpoint.READY)),
        ("GET", "/v2", Match(Endpoint.SERVER_METADATA)),
        ("POST", "/v2/repository/index", Match(Endpoint.REPOSITORY_INDEX)),
        ("POST", "/v2/repository/models/m/load", Match(Endpoint.REPOSITORY_LOAD, "m")),
        ("POST", "/v2/repository/models/m/unload", Match(Endpoint.REPOSITORY_UNLOAD, "m")),
        ("POST", "/v2/models/m/infer", Match(Endpoint.MODEL, "m", "infer")),
        ("GET", "/v2/models/m", Match(Endpoint.MODEL, "m", "")),
        ("GET", "/v2/models/m/versions/3/ready", Match(Endpoint.MODEL, "m", "ready", "3")),
        ("GET", "/v2/models/m/versions/3", Match(Endpoint.MODEL, "m", "", "3")),
        ("GET", "/v2/models/m/stats", Match(Endpoint.MODEL_STATS, "m", "stats")),
        ("GET", "/v2/models/m/versions/2/stats", Match(Endpoint.MODEL_STATS, "m", "stats", "2")),
        ("GET", "/v2/models/stats", Match(Endpoint.MODELS_STATS)),
        ("GET", "/metrics", Match(Endpoint.METRICS)),
        ("GET", "/admin/models", Match(Endpoint.ADMIN_MODELS)),
        ("POST", "/admin/models/m/warm", Match(Endpoint.ADMIN_WARM, "m")),
        ("POST", "/admin/models/m/sleep", Match(Endpoint.ADMIN_SLEEP, "m")),
    ],
)
def test_every_route_resolves(method: str, path: str, match: Match) -> None:
    assert resolve(method, path) == match


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/v2/models",
        "/v2/models/m/explain",
        "/v2/models/m/versions/1/infer/x",
        "/admin",
        "/v2/models//infer",
        "/v2/repository/models/m/delete",
        "/metrics/x",
        "/v2/",  # a trailing slash is no route (as on the predictor), never a redirect
        "/v2/models/m/infer/",
        "/v2/health/live/",
    ],
)
def test_an_unknown_path_is_not_found(path: str) -> None:
    with pytest.raises(NotFound, match="no route"):
        resolve("POST", path)


def test_a_known_path_with_the_wrong_method_names_the_right_one() -> None:
    with pytest.raises(MethodNotAllowed, match=r"method PUT .*use POST"):
        resolve("PUT", "/v2/repository/index")
    with pytest.raises(MethodNotAllowed, match=r"use GET"):
        resolve("POST", "/v2/health/live")
    with pytest.raises(MethodNotAllowed, match=r"use GET"):
        resolve("DELETE", "/v2/models/m/stats")


def test_guards_go_by_prefix_so_an_unknown_path_reveals_nothing() -> None:
    assert guard(split("/v2/health/live")) is Guard.OPEN
    assert guard(split("/v2/health/anything")) is Guard.OPEN
    assert guard(split("/admin/whatever")) is Guard.ADMIN
    assert guard(split("/v2/models/m/infer")) is Guard.API
    assert guard(split("/no/such/path")) is Guard.API
    # every table route under /admin is guarded by the admin token, and only those
    for route in ROUTES:
        assert (guard(list(route.pattern)) is Guard.ADMIN) == (route.pattern[0] == "admin")


def test_model_route_parses_versions_and_actions() -> None:
    assert model_route(["v2", "models", "m", "versions", "2"]) == ("m", "2", "")
    assert model_route(["v2", "models", "m", "ready"]) == ("m", "", "ready")
    assert model_route(["v2", "models", "m", "versions"]) is None
    assert model_route(["v2", "models", ""]) is None


def test_a_target_is_what_a_path_means_whatever_its_method() -> None:
    infer = target(b"/v2/models/m/versions/2/infer")
    assert infer.guard is Guard.API and infer.model == Match(Endpoint.MODEL, "m", "infer", "2")
    assert infer.resolve("POST") == infer.resolve("GET") == infer.model
    stats = target(b"/v2/models/m/stats")
    assert stats.resolve("GET") == Match(Endpoint.MODEL_STATS, "m", "stats")
    with pytest.raises(MethodNotAllowed, match="use GET"):
        stats.resolve("POST")
    warm = target(b"/admin/models/m/warm")
    assert warm.guard is Guard.ADMIN and warm.model is None
    assert warm.resolve("POST") == Match(Endpoint.ADMIN_WARM, "m")
    assert target(b"/v2/health/%6Cive").resolve("GET") == Match(Endpoint.LIVE)  # unquoted
    # an absolute URL's path; one with none is "/", no route
    assert target(b"http://host/v2/health/live").guard is Guard.OPEN
    with pytest.raises(NotFound, match=r"no route for GET /$"):
        target(b"http://host").resolve("GET")
