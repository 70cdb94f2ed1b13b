"""The SDK: a thin, typed client for TorchServe's APIs and what it stands on.

`client` (TorchServe: one method per endpoint), `auth` (token keys, re-read and rotated), `config`
(config.properties and project paths), `errors` (every error and the one response -> error
function), `types` (model descriptions), `metrics` (the Prometheus metrics port).
"""
