"""Drift-triggered continual retraining pipelines with promotion gates (`pipelines/*.yaml`).

    raydl.pipeline.spec      the typed pipeline spec (validated like the job spec)
    raydl.pipeline.windows   data windows: listing, order, reading, holdouts
    raydl.pipeline.gate      pure decisions: the trigger (retrain/skip) and the gate (promote/reject)
    raydl.pipeline.steps     the work of each step (drift, retrain, evaluate, calibrate)
    raydl.pipeline.state     passes and steps in SQLite beside the run dir (crash-safe resume)
    raydl.pipeline.run       one pass; `carry_out`, the one place a decision changes the registry
    raydl.pipeline.schedule  cron passes in one process (no overlap, missed runs coalesced)
    raydl.pipeline.k8s       a CronJob that runs a pass on the team's Ray cluster
    raydl.pipeline.scenario  the seeded digits windows of pipelines/digits_continual.yaml
"""
