"""The team gateway: an HTTP service (FastAPI, served by uvicorn) and a server-rendered web page in
front of a Ray cluster, for several teams. It checks who a caller is (per-team bearer tokens, stored
as salted hashes), validates the spec with raydl's typed spec, enforces the team's quota, submits
the job through the Ray Jobs API (`raydl.jobs`), keeps the history in a SQLAlchemy database
(Alembic-migrated) and reconciles it from Ray when it starts.

    config.py   gateway.yaml: data dir, database, cluster, teams and their quotas, request limits
    store.py    the tables and every query (jobs, tokens)
    tokens.py   token create / verify / revoke (salted scrypt hashes, constant-time compare)
    runner.py   the Ray edge: RayJobsRunner (Jobs API) and NoopRunner (load benchmarks, demos);
                kuberay.py KubeRayRunner (a RayJob in each team's namespace)
    service.py  submit / refresh / reconcile / cancel: the decisions, no HTTP
    app.py      the /v1 API; web.py the HTML pages; limits.py body size and rate limits
    cli.py      `raydl gateway serve|token|migrate`; client.py `raydl submit --gateway URL`
"""
