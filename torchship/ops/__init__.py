"""Operations over a server and a model store: what `Project` runs.

`deploy` (verify, register, wait), `desired` (deploy.yaml: plan and apply), `rollout` (guarded
promotion and rollback), `registry` (lineage and events), `versions` (the store's versions),
`export` (Kubernetes and KServe), `autoscale` (workers from queue time), `server` (a local
TorchServe of its own: working folder, TMPDIR, ports).
"""
