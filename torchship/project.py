"""`Project`: what the `torchship` command line does, from Python, with the same history.

A project is a folder (a checkout, or any folder `torchship init` prepared) holding
`config.properties`, the model store, checkpoints, and `.torchship/` (the local server's working
folder, signing keys, the registry). `Project` builds the client, the local server, the registry
and the keys from it, and each method is one operation that records its registry event once, here
or in the operation it calls, so a Python user and a CLI user leave the same history::

    from torchship import Project

    p = Project(".")
    p.package("sentiment", version="2.0")
    p.deploy("sentiment", version="2.0")
    p.rollout("sentiment", version="3.0")
    for event in p.history("sentiment").events:
        print(event.time, event.version, event.kind)

`TorchServe` (the thin client) stays the way to talk to a server someone else runs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchship.sdk.config import ProjectPaths, ServerConfig
from torchship.sdk.errors import ArchiveError, BadInput, TorchServeError, TrainingError

if TYPE_CHECKING:  # imported lazily at run time: `torchship --help` stays quick
    from torchship.archiver import BuildResult, VerifyReport
    from torchship.archiver.rekey import Rewrapped
    from torchship.gateway import Gateway, Tenant
    from torchship.ops.autoscale import Decision
    from torchship.ops.capture import CaptureStatus
    from torchship.ops.deploy import DeployResult
    from torchship.ops.desired import Action, ApplyReport, DesiredState
    from torchship.ops.doctor import DoctorReport
    from torchship.ops.drift import DriftReport
    from torchship.ops.registry import Event, Registry
    from torchship.ops.rollout import GoldenItem, RolloutReport
    from torchship.ops.server import LocalServer
    from torchship.perf.curve import Point
    from torchship.perf.tune import Trial
    from torchship.projectfile import ModelRecord
    from torchship.sdk.client import TorchServe
    from torchship.train.common import RunResult

__all__ = ["Project", "History", "TuneResult"]


@dataclasses.dataclass(frozen=True)
class History:
    """A model's versions and its deployment events, newest first.

    Versions carry their lineage and where they stand on the server. `live` is False when the server could not
    be asked.
    """

    name: str
    versions: list[dict[str, Any]]
    events: list[Event]
    live: bool

    def to_dict(self) -> dict[str, Any]:
        """Return the history as plain data (for --json)."""
        return {"name": self.name, "versions": self.versions, "events": [e.to_dict() for e in self.events]}


@dataclasses.dataclass(frozen=True)
class TuneResult:
    """What `tune` found: every trial, the best, and the deploy.yaml entry that serves it.

    `repackage` is the command that repackages the archive when the best torch threads differ from the
    packaged ones.
    """

    name: str
    trials: list[Trial]
    best: Trial
    slo_p99_ms: float
    settings: dict[str, Any]
    repackage: str | None
    profile: dict[int, float] = dataclasses.field(default_factory=dict)
    # "default" (what a plain deploy gives) and "tuned": points at 1, 4, 16 and 64 callers
    curves: dict[str, list[Point]] = dataclasses.field(default_factory=dict)
    plot: str | None = None

    @property
    def meets_slo(self) -> bool:
        """Whether the best trial meets the p99 budget."""
        return bool(self.best.meets(self.slo_p99_ms))

    def to_dict(self) -> dict[str, Any]:
        """Return the result as plain data, with the deploy.yaml entry (for --json)."""
        return {
            "trials": [t.to_dict() for t in self.trials],
            "best": self.best.to_dict(),
            "meets_slo": self.meets_slo,
            "profile": {str(c): share for c, share in self.profile.items()},
            "deploy_yaml": {"models": {self.name: self.settings}},
            "repackage": self.repackage,
            "curves": {label: [p.to_dict() for p in points] for label, points in self.curves.items()},
            "plot": self.plot,
        }


class Project:
    """A torchship project: its server, model store, keys and registry, and every operation on them.

    Args:
        root: the project folder (default: the current one).
        config: another TorchServe config file to use instead of `root/config.properties`.

    With `TS_MANAGEMENT_URL` / `TS_INFERENCE_URL` set, `client` talks to that server instead of
    the project's (as the CLI does).
    """

    def __init__(self, root: str | os.PathLike[str] = ".", *, config: str | os.PathLike[str] | None = None) -> None:
        self.paths = ProjectPaths(Path(root).resolve())
        self.config_path = Path(config).resolve() if config else self.paths.config_path
        self._client: TorchServe | None = None
        self._registry: Registry | None = None

    @classmethod
    def find(
        cls, start: str | os.PathLike[str] | None = None, *, config: str | os.PathLike[str] | None = None
    ) -> Project:
        """Return the project around `start` (default: the current folder).

        That is $TORCHSHIP_HOME, else the nearest folder at or above it that holds config.properties, else
        `start` itself; with `config`, the folder of that file.
        """
        if config is not None:
            return cls(ProjectPaths.find(Path(config).resolve().parent).root, config=config)
        return cls(ProjectPaths.find(Path(start) if start is not None else None).root)

    def __repr__(self) -> str:
        return f"Project({str(self.root)!r})"

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the client's connections and the registry."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._registry is not None:
            self._registry.close()
            self._registry = None

    # ------------------------------------------------------------------ what a project holds

    @property
    def root(self) -> Path:
        """The project folder."""
        return self.paths.root

    @property
    def store(self) -> Path:
        """The model store: the config's `model_store`, else `root/model_store`."""
        if self.config_path.is_file():
            return ServerConfig.load(self.config_path).model_store
        return self.paths.model_store

    @property
    def key_dir(self) -> Path:
        """The project's signing keys (`.torchship/keys/`)."""
        return self.paths.key_dir

    @property
    def public_key(self) -> Path:
        """The project's signing public key (`.torchship/keys/signing-key.pub.pem`)."""
        from torchship.archiver import public_key_path

        return public_key_path(self.paths.key_dir)

    @property
    def client(self) -> TorchServe:
        """A `TorchServe` client for the project's server (or the TS_* environment's)."""
        if self._client is None:
            from torchship.sdk.client import TorchServe

            if os.environ.get("TS_MANAGEMENT_URL") or os.environ.get("TS_INFERENCE_URL"):
                self._client = TorchServe.from_env()
            else:
                self._client = TorchServe.from_config(self.config_path)
        return self._client

    @property
    def server(self) -> LocalServer:
        """The project's local TorchServe (`LocalServer`), started or not."""
        from torchship.archiver import keyring_path
        from torchship.ops.server import LocalServer

        return LocalServer(
            self.config_path,
            self.paths.server_dir,
            model_keys=keyring_path(self.paths.key_dir),
            capture_dir=self.paths.capture_dir,
        )

    @property
    def gateway(self) -> Gateway:
        """The TLS gateway in front of the project's server (`Gateway`, `.torchship/gateway/`), started or not."""
        from torchship.gateway import Gateway

        return Gateway(self.server, self.paths.gateway_dir, self.paths.tls_dir)

    @property
    def registry(self) -> Registry:
        """The project's registry of archives and deployment events (`.torchship/registry.db`)."""
        if self._registry is None:
            from torchship.ops.registry import Registry

            self._registry = Registry(self.paths.state_dir / "registry.db")
        return self._registry

    def golden(self, name: str) -> Path:
        """Where the golden set of `name` is looked for by default (tests/golden/NAME.jsonl)."""
        return self.root / "tests" / "golden" / f"{name}.jsonl"

    def doctor(self) -> DoctorReport:
        """Check what this machine needs to run the project and what it has, with the fix of each gap.

        Python, Java, the pinned packages, the worker's Python, ports, the server's health, key and store
        modes, disk and data: one `Check` row each (`torchship doctor`; docs/doctor.md).
        """
        from torchship.ops.doctor import diagnose

        return diagnose(self)

    def _key(self, public_key: str | os.PathLike[str] | None) -> Path:
        return Path(public_key) if public_key else self.public_key

    # ------------------------------------------------------------------ build

    def train(
        self,
        name: str,
        *,
        seed: int = 0,
        epochs: int | None = None,
        quick: bool = False,
        shuffle_labels: bool = False,
        progress: bool = True,
    ) -> RunResult:
        """Train example model `name` into `checkpoints/NAME/<run>/`; returns the run (`RunResult`)."""
        from torchship import train as training
        from torchship.archiver.names import check_name

        check_name(name)
        trainers = training.trainers()
        if name not in trainers:
            raise TrainingError(f"no training script for {name!r}; known: {', '.join(sorted(trainers))}")
        extra = {"shuffle_labels": True} if shuffle_labels else {}
        return trainers[name](self.paths.checkpoints, seed=seed, epochs=epochs, quick=quick, progress=progress, **extra)

    def package(
        self,
        name: str | None = None,
        *,
        version: str | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        force: bool = False,
        handler: str | os.PathLike[str] | None = None,
        weights: str | os.PathLike[str] | None = None,
        model_file: str | os.PathLike[str] | None = None,
        extra_files: Iterable[str | os.PathLike[str]] = (),
        model_config: str | os.PathLike[str] | dict[str, Any] | None = None,
        threads: int | None = None,
        requirements: str | os.PathLike[str] | None = None,
        import_check: bool = True,
        encrypt: bool = False,
        model_key: str | os.PathLike[str] | None = None,
        optimize: str | None = None,
    ) -> BuildResult:
        """Build and sign `store/NAME-VERSION.mar`, and record it in the registry.

        An example model: `package("mlp")` takes the newest checkpoint (or `checkpoint`). A model of
        your own: `package("my-model", checkpoint=RUN, handler="handler.py", model_file="model.py")`
        packs RUN's weights and meta.json (its lineage goes into the provenance), or `weights=` alone;
        a model recorded in torchship.yaml needs only its name (the newest complete run of its
        checkpoints folder; any argument given overrides the record). torchship's handler base is
        packed when the code imports it. Without `version`, the next free major version. `threads`:
        torch threads per worker (tune finds it). With a handler, `requirements` is a requirements
        file packed into the archive (deploy checks it against the server's Python), and the handler
        and model file must first import in the server's Python (ArchiveError naming each missing
        module otherwise); `import_check=False` skips that, for an archive built on another machine
        than the server's. `encrypt` (or `encrypt: true` in torchship.yaml): the safetensors weights are
        encrypted at rest under the project's model key (`.torchship/keys/model-keys.json`, made on first
        use) or the keyring file `model_key` (docs/packaging.md#encrypted-weights). `optimize`: a cheaper
        variant the worker makes at load ("int8-dynamic", "channels-last", or "auto" for the fastest that
        pays), only when it keeps the run's held-out accuracy within 0.5 points (archiver/optimize.py;
        the provenance's `checkpoint.optimize` records it). Returns archiver's
        `BuildResult` (path, provenance, digest, notes, checkpoint, handler_base).
        """
        from torchship import archiver
        from torchship.archiver.names import check_name, check_version
        from torchship.ops.versions import next_version
        from torchship.train.common import latest_run

        if name is None:
            raise ArchiveError("package needs the model's name")
        check_name(name)
        if version is not None:
            check_version(version)
        record = self.recorded_models().get(name)
        encrypt = encrypt or (record is not None and record.encrypt)
        if model_key is not None and not encrypt:
            raise BadInput("a model key goes with encryption: add --encrypt (encrypt=True)")
        extra = tuple(Path(p) for p in extra_files)
        run = Path(checkpoint) if checkpoint is not None else None
        added: tuple[Path, ...] = ()
        if record is not None:  # the project file's record; what is given overrides it
            handler = handler if handler is not None else record.handler
            model_file = model_file if model_file is not None else record.model_file
            extra = extra or record.extra_files
            requirements = requirements if requirements is not None else record.requirements
            if run is None and weights is None and record.checkpoints is not None:
                run = latest_run(record.checkpoints)
                if run is None:
                    shown = _relative(record.checkpoints, self.root)
                    raise ArchiveError(
                        f"no checkpoint of {name} in {shown} (torchship.yaml models.{name}.checkpoints): train it "
                        "first (torchship.checkpoint.save writes a run there), or give --checkpoint DIR"
                    )
        if handler is not None:
            config = model_config if isinstance(model_config, dict) else _read_yaml(model_config)
            if run is not None:
                if weights is not None:
                    raise ArchiveError("give the weights as a checkpoint folder or as a file (--weights), not both")
                weights_file, meta_file = archiver.checkpoint_files(run)
                weights, extra = weights_file, (meta_file, *extra)
            version = version or next_version(self.store, name)
            spec, added = archiver.with_handler_base(
                archiver.ArchiveSpec(
                    name,
                    version,
                    Path(handler),
                    Path(weights) if weights else None,
                    Path(model_file) if model_file else None,
                    extra,
                    config,
                    Path(requirements) if requirements else None,
                )
            )
        else:
            if weights or model_file or model_config or requirements or extra:
                raise ArchiveError(
                    "weights, model_file, extra_files, model_config and requirements go with a handler of your own"
                )
            if name not in archiver.EXAMPLES:
                raise ArchiveError(
                    f"{name} is neither an example model ({', '.join(sorted(archiver.EXAMPLES))}) nor recorded in "
                    f"{self.paths.project_file.name}: give its handler (--handler, with --checkpoint or --weights), "
                    f"or record it in {self.paths.project_file}"
                )
            run = run or latest_run(self.paths.checkpoints, name)
            if run is None:
                raise ArchiveError(
                    f"no checkpoint of {name} in {self.paths.checkpoints}: run `torchship train {name}` first"
                )
            version = version or next_version(self.store, name)
            spec = archiver.example_spec(name, run, version)
        if threads is not None:
            handler_config = {**(spec.model_config.get("handler") or {}), "threads": threads}
            spec = dataclasses.replace(spec, model_config={**spec.model_config, "handler": handler_config})
        optimized_meta: dict[str, Any] | None = None
        if optimize is not None:  # the variant goes into the model-config, the gate's record into the provenance
            from torchship.archiver.optimize import optimize_spec
            from torchship.train import held_out

            if run is None:
                raise BadInput("optimize needs a training run (--checkpoint): its held-out data gates the variant")
            spec, optimized_meta, _ = optimize_spec(spec, run, optimize, held_out)
        ring: archiver.Keyring | None = None
        notes: tuple[str, ...] = ()
        if encrypt:
            from torchship.archiver.encryption import check_encryptable

            check_encryptable(spec.weights)  # before a keyring is made for nothing
            keyring, made = (Path(model_key), False) if model_key else archiver.ensure_keyring(self.key_dir)
            ring = archiver.load_keyring(keyring)
            if made:
                notes = (
                    f"made the project's model keyring {_relative(keyring, self.root)} (mode 0600): keep a copy "
                    "somewhere safe, as weights encrypted under a lost key cannot be opened again",
                )
        result = archiver.package(
            spec,
            self.store,
            self.paths.key_dir,
            force=force,
            meta=optimized_meta,
            check_imports=handler is not None and import_check,
            model_key=ring,
        )
        result = dataclasses.replace(
            result, checkpoint=run, handler_base=tuple(p.name for p in added), notes=notes + result.notes
        )
        self.registry.record_archive(
            name=spec.name,
            version=spec.version,
            digest=result.digest,
            path=result.path,
            provenance=result.provenance,
            signature=archiver.signature_path(result.path),
        )
        return result

    def recorded_models(self) -> dict[str, ModelRecord]:
        """The project's own models as torchship.yaml records them (none without the file).

        ConfigError naming the file and key when the file is not valid.
        """
        from torchship.projectfile import load_project_file

        return load_project_file(self.paths.project_file, self.root).models

    def verify(
        self,
        archive: str | os.PathLike[str],
        *,
        public_key: str | os.PathLike[str] | None = None,
        allow_unsigned: bool = False,
        model_key: str | os.PathLike[str] | None = None,
    ) -> VerifyReport:
        """Every check of `archive` (a `VerifyReport`; `.ok`, `.failure`); never raises for a bad one.

        Encrypted weights are decrypted and checked with the keyring `model_key`, else with the project's
        when it has one; without a keyring they are checked as ciphertext and the report says so.
        """
        from torchship import archiver

        return archiver.verify_archive(
            Path(archive),
            public_key=self._key(public_key),
            allow_unsigned=allow_unsigned,
            model_keys=self._keyring_in_use(model_key),
        )

    # ------------------------------------------------------------------ tenant keys (the gateway's)

    def create_key(
        self, name: str, *, models: list[str] | None = None, rate: str | None = None, burst: int | None = None
    ) -> tuple[Tenant, str]:
        """Make tenant `name`'s gateway API key, limited to `models` (None: all) and `rate` ("10/s", "600/m").

        Returns the tenant and its key: the only time the key is given out. A running gateway reloads, and
        the key works when this returns.
        """
        from torchship.gateway import Rate

        limit = Rate.parse(rate, burst) if rate is not None else None
        if limit is None and burst is not None:
            raise BadInput("--burst needs --rate")
        return self.gateway.add_tenant(name, models=models, rate=limit)

    def revoke_key(self, name: str) -> bool:
        """Remove tenant `name`'s key; a running gateway refuses it from when this returns. False when none."""
        return self.gateway.revoke_tenant(name)

    def tenant_keys(self) -> list[dict[str, Any]]:
        """Each tenant (never its key) with its requests and errors from the gateway's access log.

        Requests without a key, or with a key nobody holds, are rows too ("(no key)", "(unknown key)"),
        with `tenant` False.
        """
        gateway = self.gateway
        usage = gateway.usage()
        rows = []
        for t in gateway.tenants.all():
            counted = usage.pop(t.name, None)
            rows.append({**t.to_dict(), "tenant": True, "usage": counted.to_dict() if counted else None})
        rows += [{"name": who, "tenant": False, "usage": counted.to_dict()} for who, counted in sorted(usage.items())]
        return rows

    # ------------------------------------------------------------------ model keys

    def model_keys(self, *, model_key: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
        """The model keys and the archives of the store that use each: `key_id`, `current`, `in_keyring`, `archives`.

        The keyring is `model_key`, else the project's. Never the keys themselves. A key that an archive
        uses but the keyring lacks is listed with `in_keyring` False: that archive cannot be opened here.
        """
        from torchship.archiver.model_keys import load_keyring
        from torchship.archiver.rekey import encrypted_archives

        path = self._model_keyring(model_key)
        ring = load_keyring(path) if os.path.lexists(path) or model_key else None
        using: dict[str, list[str]] = {}
        for archive, ids in encrypted_archives(self.store):
            for kid in ids:
                using.setdefault(kid, []).append(archive.name)
        known = sorted(ring.keys) if ring else []
        return [
            {
                "key_id": kid,
                "current": bool(ring and kid == ring.current),
                "in_keyring": kid in known,
                "archives": using.get(kid, []),
            }
            for kid in [*known, *sorted(set(using) - set(known))]
        ]

    def rotate_model_key(
        self, *, model_key: str | os.PathLike[str] | None = None
    ) -> tuple[str, str, list[Rewrapped], list[tuple[Path, str]]]:
        """Make a new current model key and rewrap every encrypted archive of the store under it.

        The old keys stay in the keyring (`model_key`, else the project's), so copies of old archives keep
        opening. Each archive is verified, gets a new torchship-keys.json and provenance (its weights' bytes
        untouched), is re-signed and replaced atomically, and its registry record takes the new digest.
        Returns (old current id, new current id, the rewrapped archives, (archive, reason) of those that
        could not be).
        """
        from torchship.archiver.model_keys import load_keyring, rotate_keyring
        from torchship.archiver.names import InvalidName, check_name_version
        from torchship.archiver.rekey import encrypted_archives, rewrap

        path = self._model_keyring(model_key)
        if not os.path.lexists(path):  # a dangling link is load_keyring's to refuse, with its reason
            raise ArchiveError(
                f"no model keyring at {path}: nothing to rotate (`torchship package NAME --encrypt` makes it)"
            )
        old, new = rotate_keyring(path)
        ring = load_keyring(path)
        done: list[Rewrapped] = []
        failed: list[tuple[Path, str]] = []
        for archive, _ in encrypted_archives(self.store):
            try:
                result = rewrap(archive, ring, self.key_dir, public_key=self.public_key)
            except TorchServeError as exc:
                failed.append((archive, str(exc)))
                continue
            except OSError as exc:  # reading it: this archive alone, the others are still rewrapped
                failed.append((archive, f"{exc.strerror or exc}"))
                continue
            done.append(result)
            model = result.provenance["model"]
            try:
                check_name_version(model["name"], model["version"])
            except InvalidName:
                continue
            if result.changed and self.registry.archive(model["name"], model["version"]) is not None:
                self.registry.record_rekey(
                    model["name"],
                    model["version"],
                    digest=result.digest,
                    provenance=result.provenance,
                    from_keys=list(result.old_keys),
                    to_key=result.new_key,
                )
        return old, new, done, failed

    def retire_model_key(self, key_id: str, *, model_key: str | os.PathLike[str] | None = None) -> None:
        """Remove `key_id` from the keyring, only when nothing here may still need it.

        Archives elsewhere (copies, exports, backups) that still use it can no longer be opened with this
        keyring: rotate, redeploy and replace those copies first. ArchiveError when an archive of the store
        uses it, when an archive of the store cannot be read (which key it uses cannot be told), when the
        running local server has loaded an archive wrapped under it (its workers reopen the unpacked copy
        on every start: a scale, a crash), or when it is the current key.
        """
        from torchship.archiver.model_keys import retire_key, shown_key_id
        from torchship.archiver.rekey import encrypted_archives

        shown = shown_key_id(key_id)
        found = list(encrypted_archives(self.store))
        unreadable = [a.name for a, ids in found if not ids]
        if unreadable:
            raise ArchiveError(
                f"{len(unreadable)} archive(s) of the store cannot be read ({', '.join(unreadable)}), so which "
                f"model key they use cannot be told: {shown} not retired; repair or remove them first"
            )
        users = [a.name for a, ids in found if key_id in ids]
        if users:
            raise ArchiveError(
                f"model key {shown} still wraps {len(users)} archive(s) of the store ({', '.join(users)}): "
                "not retired; rewrap them first (torchship keys rotate-model-key)"
            )
        loaded = self._loaded_under(key_id)
        if loaded:
            redeploy = "; ".join(
                f"torchship unregister {n} --version {v} && torchship deploy {n} --version {v}"
                for n, v, _ in loaded
                if n and v
            )
            raise ArchiveError(
                f"model key {shown} is still needed by the running local server: "
                + ", ".join(f"{n or '?'} {v or '?'} (unpacked in {folder})" for n, v, folder in loaded)
                + " was loaded from an archive wrapped under it, and its workers reopen that unpacked copy on "
                "every start (a scale, a crash): not retired. Redeploy first (unregister and deploy again, so "
                "the rewrapped archive is unpacked" + (f": {redeploy}" if redeploy else "") + "), then retire it"
            )
        retire_key(self._model_keyring(model_key), key_id)

    def _loaded_under(self, key_id: str) -> list[tuple[str | None, str | None, Path]]:
        """(model, version, unpacked folder) of what the running local server unpacked from an archive
        whose keys member names `key_id`, or whose keys member cannot be read. Nothing when it is not running."""
        import json

        from torchship.archiver.encryption import KEYS_MEMBER, parse_keys_member

        server = self.server
        if not server.is_running():
            return []
        out: list[tuple[str | None, str | None, Path]] = []
        for keys_file in sorted((server.tmpdir / "models").glob(f"*/{KEYS_MEMBER}")):
            folder = keys_file.parent
            try:
                ids = {e.key_id for e in parse_keys_member(keys_file.read_bytes()).values()}
            except (OSError, ValueError, TorchServeError):
                ids = {key_id}  # cannot tell: it may be
            if key_id not in ids:
                continue
            name: str | None = None
            version: str | None = None
            try:
                model = json.loads((folder / "MAR-INF" / "MANIFEST.json").read_text())["model"]
                name, version = str(model["modelName"]), str(model["modelVersion"])
            except (OSError, ValueError, KeyError, TypeError):
                pass
            out.append((name, version, folder))
        return out

    def _keyring_in_use(self, model_key: str | os.PathLike[str] | None) -> Path | None:
        """The keyring `model_key`, else the project's when there is one (a link, even a dangling one,
        counts: verification then refuses it by name rather than skipping the keyed checks)."""
        path = self._model_keyring(model_key)
        return path if model_key or os.path.lexists(path) else None

    def _model_keyring(self, model_key: str | os.PathLike[str] | None) -> Path:
        from torchship.archiver import keyring_path

        return Path(model_key) if model_key else keyring_path(self.key_dir)

    # ------------------------------------------------------------------ serve

    def deploy(
        self,
        name: str,
        version: str | None = None,
        *,
        workers: int | None = None,
        batch_size: int | None = None,
        max_batch_delay: int | None = None,
        make_default: bool = False,
        timeout: float = 120.0,
        public_key: str | os.PathLike[str] | None = None,
        allow_unsigned: bool = False,
    ) -> DeployResult:
        """Verify, register and wait until `name` `version` (default: the newest archive) serves.

        Example models take their serving defaults (workers, batching) unless told otherwise. Returns a
        `DeployResult` (action, description, seconds_to_ready).
        """
        from torchship.archiver import EXAMPLES
        from torchship.ops.deploy import deploy

        serving = EXAMPLES[name].serving if name in EXAMPLES else {}
        result = deploy(
            self.client,
            self.store,
            name,
            version,
            workers=workers or serving.get("workers", 1),
            batch_size=batch_size or serving.get("batch_size"),
            max_batch_delay=max_batch_delay if max_batch_delay is not None else serving.get("max_batch_delay"),
            make_default=make_default,
            timeout=timeout,
            public_key=self._key(public_key),
            allow_unsigned=allow_unsigned,
            model_keys=self._keyring_in_use(None),
        )
        d = result.description
        if result.action == "registered":
            self.registry.record(name, d.version, "registered", via="deploy", workers=d.min_workers)
        if make_default:
            self.registry.record(name, d.version, "default_set", via="deploy")
        return result

    def capture(
        self,
        name: str,
        *,
        version: str | None = None,
        sample: float,
        redact: dict[str, str] | None = None,
        max_bytes: int | None = None,
        file_bytes: int | None = None,
        drift_every_s: float | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """Capture a sample of `name`'s requests (default: the version the server serves by default).

        The workers pick it up within a second, with no restart; returns (version, settings). See
        torchship.ops.capture and handlers/torchship_capture.py (the record format, redaction, rotation);
        `drift_every_s`: how often the workers measure drift for the metrics port (0: never; default 30).
        """
        from torchship.ops.capture import write_settings

        version = version or self._served_version(name)
        settings = write_settings(
            self.paths.capture_dir,
            name,
            version,
            sample=sample,
            redact=redact,
            max_bytes=max_bytes,
            file_bytes=file_bytes,
            drift_every_s=drift_every_s,
        )
        self.registry.record(name, version, "capture", sample=settings["sample"], redact=sorted(settings["redact"]))
        return version, settings

    def capture_off(self, name: str, *, version: str | None = None) -> tuple[str, bool]:
        """Stop capturing `name` (default: its default version); what was captured stays."""
        from torchship.ops.capture import turn_off

        version = version or self._served_version(name)
        was_on = turn_off(self.paths.capture_dir, name, version)
        if was_on:
            self.registry.record(name, version, "capture", sample=0)
        return version, was_on

    def capture_status(self, name: str | None = None) -> list[CaptureStatus]:
        """Every version's capture settings and what it holds (of one model, when given)."""
        from torchship.ops.capture import status

        return status(self.paths.capture_dir, name)

    def drift(
        self,
        name: str,
        *,
        version: str | None = None,
        window: int = 500,
        plot: str | os.PathLike[str] | None = None,
        capture_dir: str | os.PathLike[str] | None = None,
    ) -> DriftReport:
        """Compare the last `window` captured requests of `name` with its training reference, per signal.

        The version is the served one unless given; the reference is the one packed in
        model_store/NAME-VERSION.mar; each signal is judged by PSI or KS; `plot`: a PNG of both. Returns the
        report whether or not it found drift (`report.drift`); BadInput when too few requests were captured.
        `capture_dir`: where the workers write (default: the project's .torchship/capture).
        See torchship.ops.drift for the tests and their thresholds.
        """
        from torchship.ops.drift import drift

        version = version or self._served_version(name)
        return drift(
            Path(capture_dir) if capture_dir else self.paths.capture_dir,
            self.store / f"{name}-{version}.mar",
            name,
            version,
            window=window,
            plot_path=Path(plot) if plot else None,
        )

    def _served_version(self, name: str) -> str:
        served = self.client.describe(name)
        if not served:
            raise BadInput(f"{name} has no default version on the server: give --version")
        return served[0].version

    def deploy_settings(self, name: str) -> dict[str, int]:
        """Return the workers and batching a plain `deploy` of `name` registers with.

        An example model's serving defaults, else one worker and TorchServe's own (batch 1; an archive's
        model-config may ask for more).
        """
        from torchship.archiver import EXAMPLES

        serving = EXAMPLES[name].serving if name in EXAMPLES else {}
        return {
            "workers": serving.get("workers", 1),
            "batch_size": serving.get("batch_size", 1),
            "max_batch_delay": serving.get("max_batch_delay", 100),
        }

    def scale(self, name: str, *, min_workers: int, max_workers: int | None = None, version: str | None = None) -> str:
        """Set a version's workers (default: the default version's) and wait until they run."""
        if max_workers is not None and max_workers < min_workers:
            raise BadInput(f"max_workers ({max_workers}) is below min_workers ({min_workers})")
        status = self.client.scale(name, min_workers=min_workers, max_workers=max_workers, version=version)
        self.registry.record(name, version, "scaled", min_workers=min_workers, max_workers=max_workers or min_workers)
        return str(status)

    def set_default(self, name: str, version: str) -> str:
        """Make `version` the one `/predictions/NAME` serves."""
        status = self.client.set_default(name, version)
        self.registry.record(name, version, "default_set", via="set-default")
        return str(status)

    def unregister(self, name: str, version: str | None = None) -> str:
        """Remove a version from the server (default: the default version); the archive stays."""
        from torchship.ops.takedown import take_down

        status = take_down(self.client, name, version)
        self.registry.record(name, version, "unregistered", via="unregister")
        return str(status)

    # ------------------------------------------------------------------ version control

    def plan(self, desired: str | os.PathLike[str] | DesiredState = "deploy.yaml") -> list[Action]:
        """What `apply(desired)` would change (a desired-state file, or a parsed `DesiredState`)."""
        from torchship.ops.capture import capture_plan
        from torchship.ops.desired import plan

        state = self._desired(desired)
        return plan(self.client, state) + capture_plan(self.paths.capture_dir, state)

    def apply(
        self,
        desired: str | os.PathLike[str] | DesiredState = "deploy.yaml",
        *,
        public_key: str | os.PathLike[str] | None = None,
        progress: Callable[[Action], None] | None = None,
        timeout: float = 120.0,
    ) -> ApplyReport:
        """Converge the server to the desired state (idempotent); an `ApplyReport`.

        Then each model's `capture:` entry is applied to its listed versions (torchship.ops.capture).
        """
        from torchship.ops.capture import apply_capture, capture_plan
        from torchship.ops.desired import apply

        state = self._desired(desired)
        report = apply(
            self.client,
            self.store,
            state,
            public_key=self._key(public_key),
            registry=self.registry,
            progress=progress,
            timeout=timeout,
            model_keys=self._keyring_in_use(None),
        )
        if not report.ok:
            return report
        for action in capture_plan(self.paths.capture_dir, state):
            if progress:
                progress(action)
            apply_capture(self.paths.capture_dir, action)
            self.registry.record(action.model, action.version, "capture", via="apply", sample=action.params["sample"])
            report.done.append(action)
        return report

    def rollout(
        self,
        name: str,
        version: str,
        *,
        golden: str | os.PathLike[str] | Sequence[GoldenItem] | None = None,
        min_accuracy: float | None = None,
        min_agreement: float | None = None,
        max_p99_ms: float | None = None,
        warmup: int = 20,
        load_requests: int = 200,
        concurrency: int = 4,
        public_key: str | os.PathLike[str] | None = None,
        timeout: float = 120.0,
        log: Callable[[str], None] | None = None,
    ) -> RolloutReport:
        """Promote `version` behind guards, with automatic rollback; a `RolloutReport`.

        The report has `.passed`, `.gate`, `.reason` and `.figures`. `golden`: a golden-set file or its items
        (default: tests/golden/NAME.jsonl).
        """
        from torchship.ops.rollout import load_golden, rollout

        items: list[GoldenItem]
        if golden is None or isinstance(golden, (str, os.PathLike)):
            path = Path(golden) if golden is not None else self.golden(name)
            if not path.is_file():
                raise BadInput(f"no golden set at {path}: give one (golden=FILE, --golden FILE)")
            items = load_golden(path)
        else:
            items = list(golden)
        return rollout(
            self.client,
            self.store,
            name,
            version,
            golden=items,
            min_accuracy=min_accuracy,
            min_agreement=min_agreement,
            max_p99_ms=max_p99_ms,
            warmup=warmup,
            load_requests=load_requests,
            concurrency=concurrency,
            public_key=self._key(public_key),
            model_keys=self._keyring_in_use(None),
            registry=self.registry,
            timeout=timeout,
            log=log,
        )

    def rollout_live(
        self,
        name: str,
        version: str,
        *,
        canary: float = 10.0,
        shadow: float = 50.0,
        duration: float = 60.0,
        min_requests: int = 100,
        min_agreement: float | None = None,
        max_p99_ms: float | None = None,
        public_key: str | os.PathLike[str] | None = None,
        timeout: float = 120.0,
        log: Callable[[str], None] | None = None,
    ) -> RolloutReport:
        """Judge `version` on live traffic through the gateway, then promote it or take it away.

        `canary`% of /predictions/NAME goes to it, `shadow`% of the rest is mirrored to it, for `duration`
        seconds (torchship.ops.live: the gates, and what happens on Ctrl-C). Needs `serve start --tls`.
        """
        from torchship.ops.live import live_rollout

        return live_rollout(
            self.client,
            self.gateway,
            self.store,
            name,
            version,
            capture_dir=self.paths.capture_dir,
            canary=canary,
            shadow=shadow,
            duration=duration,
            min_requests=min_requests,
            min_agreement=min_agreement,
            max_p99_ms=max_p99_ms,
            public_key=self._key(public_key),
            model_keys=self._keyring_in_use(None),
            registry=self.registry,
            timeout=timeout,
            log=log,
        )

    def rollback(self, name: str) -> tuple[str, str]:
        """Make the previous good version the default again; (old default, new default)."""
        from torchship.ops.rollout import rollback

        return rollback(self.client, name, self.registry)

    def history(self, name: str) -> History:
        """Versions with lineage and server state, and the deployment events, newest first."""
        from torchship.archiver.names import check_name

        check_name(name)
        archives = self.registry.archives(name)
        events = self.registry.events(name)
        try:
            live: dict[str, Any] | None = {d.version: d for d in self.client.versions(name)}
        except TorchServeError:
            live = None
        versions = [
            {
                **a.to_dict(),
                "registered": live is not None and a.version in live,
                "default": bool(live and a.version in live and live[a.version].is_default),
            }
            for a in archives
        ]
        return History(name, versions, events, live is not None)

    def export(
        self,
        target: str,
        *,
        out: str | os.PathLike[str],
        desired: str | os.PathLike[str] | DesiredState = "deploy.yaml",
        name: str = "torchship",
        image: str | None = None,
        max_replicas: int = 4,
        storage_uri: str | None = None,
        canary_percent: int | None = None,
        public_key: str | os.PathLike[str] | None = None,
        model_key: str | os.PathLike[str] | None = None,
        host: str | None = None,
        tls_secret: str | None = None,
        namespace: str | None = None,
        ingress_namespace: str | None = None,
        canary: str | None = None,
        shadow: str | None = None,
    ) -> dict[str, list[Path]]:
        """Write Kubernetes (`k8s`) or KServe (`kserve`) manifests and the model-store layout of the desired state.

        Its archives are verified; returns what was written. Encrypted archives also get a Secret with
        the model keys that open them (under "secrets"), from the keyring `model_key` or the project's.
        k8s: `host` adds an ingress-nginx Ingress with TLS (`tls_secret`), `canary` ("MODEL:VERSION:PCT")
        and `shadow` ("MODEL:VERSION") a live rollout of one candidate (torchship.ops.export).
        """
        from torchship import archiver
        from torchship.ops.export import IMAGE, export

        return export(
            target,
            self._desired(desired),
            self.store,
            Path(out),
            public_key=self._key(public_key),
            name=name,
            image=image or IMAGE,
            max_replicas=max_replicas,
            storage_uri=storage_uri,
            canary_percent=canary_percent,
            model_keys=Path(model_key) if model_key else archiver.keyring_path(self.key_dir),
            host=host,
            tls_secret=tls_secret,
            namespace=namespace,
            ingress_namespace=ingress_namespace,
            canary=canary,
            shadow=shadow,
        )

    # ------------------------------------------------------------------ performance

    def replay_bodies(self, name: str, *, version: str | None = None, window: int = 1000) -> list[Any]:
        """The last `window` captured requests of `name` (default: its served version) that can be sent again.

        Answered ones, as they were sent (see torchship.ops.capture.replay_inputs); an error says how to
        capture some when there are none.
        """
        from torchship.ops.capture import records, replay_inputs

        version = version or self._served_version(name)
        bodies = replay_inputs(records(self.paths.capture_dir, name, version, last=window))
        if not bodies:
            raise BadInput(
                f"no captured request of {name} {version} to replay: torchship capture {name} --sample 0.1, "
                "then let traffic flow (redacted or oversized requests cannot be replayed)"
            )
        return bodies

    def replay_golden(self, name: str, *, window: int = 1000) -> list[GoldenItem]:
        """Return a golden set from production: the last `window` captured requests of `name`'s default version.

        Each with the decisive fields (labels, ids) of the answer it gave (torchship.ops.capture.replay_golden).
        """
        from torchship.ops.capture import records, replay_golden

        version = self._served_version(name)
        items = replay_golden(records(self.paths.capture_dir, name, version, last=window))
        if not items:
            raise BadInput(
                f"no captured request of {name} {version} to judge a rollout on: torchship capture {name} "
                "--sample 0.1, then let traffic flow"
            )
        return items

    def bench(
        self,
        name: str,
        bodies: Sequence[Any],
        *,
        version: str | None = None,
        concurrency: int = 4,
        duration: float | None = 10.0,
        requests: int | None = None,
        engine: str = "auto",
        stream: bool = False,
        plot: str | os.PathLike[str] | None = None,
    ) -> dict[str, Any]:
        """Load-test a model: throughput, latency percentiles, errors by status.

        With `stream`, time to first token and tokens/s. `engine`: "wrk" (C, when installed), "python", or
        "auto".
        """
        from torchship.perf.bench import bench, bench_stream, plot_latencies

        if stream:
            return dict(
                bench_stream(
                    self.client,
                    name,
                    bodies,
                    version=version,
                    concurrency=concurrency,
                    duration=duration,
                    requests=requests,
                )
            )
        if engine == "auto" and (plot or len(bodies) > 1):
            engine = "python"  # wrk sends one body and gives no per-request latencies to plot
        result, load = bench(
            self.client,
            name,
            bodies,
            version=version,
            concurrency=concurrency,
            duration=duration,
            requests=requests,
            keep=True,
            engine=engine,
        )
        if plot and load is not None:
            plot_latencies(load, Path(plot), title=f"{name}: concurrency {concurrency}")
            result["plot"] = str(plot)
        return dict(result)

    def tune(
        self,
        name: str,
        bodies: Sequence[Any] | None = None,
        *,
        slo_p99_ms: float,
        version: str | None = None,
        concurrency: int = 16,
        profile: dict[int, float] | None = None,
        seconds: float = 5.0,
        max_workers: int = 2,
        cores: int | None = None,
        engine: str = "auto",
        write: str | os.PathLike[str] | None = None,
        public_key: str | os.PathLike[str] | None = None,
        curve: bool = True,
        plot: str | os.PathLike[str] | None = None,
        log: Callable[[str], None] | None = None,
    ) -> TuneResult:
        """Find the fastest batching, workers and threads whose p99 meets `slo_p99_ms`.

        See `torchship.perf.tune`. The load: `profile` (concurrency -> share of the time), else `concurrency`.
        `bodies` default to the golden set's inputs; `write` merges the winner into that desired-state file
        (never writing one `apply` would refuse). With `curve`, the winner and the settings a plain deploy gives
        are then measured at 1, 4, 16 and 64 callers (`plot`: a PNG of both curves).
        """
        from torchship.archiver import archive_path
        from torchship.ops.desired import merge_settings
        from torchship.ops.versions import latest_version
        from torchship.perf import wrk
        from torchship.perf.tune import compare_curves, tune

        version = version or latest_version(self.store, name)
        if version is None:
            raise ArchiveError(f"no archive of {name} in {self.store}: run `torchship package {name}` first")
        if bodies is None:
            from torchship.ops.rollout import load_golden

            if not self.golden(name).is_file():
                raise BadInput(f"no requests to tune with: give bodies ({self.golden(name)} is missing)")
            bodies = [g.input for g in load_golden(self.golden(name))]
        if engine == "auto":
            engine = "wrk" if wrk.available() and len(bodies) == 1 else "python"
        say: Callable[[str], None] = log or (lambda line: None)
        trials, best = tune(
            self.client,
            self.store,
            name,
            version,
            list(bodies),
            slo_p99_ms=slo_p99_ms,
            concurrency=concurrency,
            profile=profile,
            seconds=seconds,
            max_workers=max_workers,
            cores=cores,
            public_key=self._key(public_key),
            key_dir=self.paths.key_dir,
            log=say,
            engine=engine,
        )
        settings = {
            "versions": [version],
            "default": version,
            "workers": {"min": best.workers, "max": best.workers},
            "batch_size": best.batch_size,
            "max_batch_delay_ms": best.max_batch_delay,
        }
        repackage = repackage_hint(archive_path(self.store, name, version), name, best.threads)
        if write:
            merge_settings(Path(write), name, settings)
        curves: dict[str, list[Point]] = {}
        if curve:
            say("\nthe winner and a plain deploy's settings, at 1, 4, 16 and 64 callers:")
            curves = compare_curves(
                self.client,
                self.store,
                name,
                version,
                {"default": self.deploy_settings(name), "tuned": best.settings()},
                list(bodies),
                seconds=seconds,
                engine=engine,
                public_key=self._key(public_key),
                key_dir=self.paths.key_dir,
                log=say,
            )
            if plot:
                from torchship.perf.curve import plot_curves

                plot_curves(curves, Path(plot), f"{name} {version}: a plain deploy against tuned")
        return TuneResult(
            name,
            list(trials),
            best,
            slo_p99_ms,
            settings,
            repackage,
            dict(profile or {concurrency: 1.0}),
            curves,
            str(plot) if plot and curves else None,
        )

    def autoscale(
        self,
        name: str,
        *,
        min_workers: int,
        max_workers: int,
        version: str | None = None,
        target_queue_ms: float = 50.0,
        interval: float = 1.0,
        up_cooldown: float = 3.0,
        down_cooldown: float = 15.0,
        duration: float | None = None,
        handle_signals: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> list[Decision]:
        """Scale `name`'s workers within [min, max] from its queue time; returns the decisions.

        It runs until `duration` ends (or Ctrl-C/SIGTERM with `handle_signals`); each decision is recorded.
        """
        from torchship.ops.autoscale import Autoscaler

        if max_workers < min_workers:
            raise BadInput(f"max_workers ({max_workers}) is below min_workers ({min_workers})")

        def record(d: Decision) -> None:
            self.registry.record(name, version, "scaled", via="autoscale", workers=d.workers_to, reason=d.reason)

        scaler = Autoscaler(
            self.client,
            name,
            min_workers,
            max_workers,
            version=version,
            target_queue_ms=target_queue_ms,
            interval=interval,
            up_cooldown=up_cooldown,
            down_cooldown=down_cooldown,
            log=log or (lambda line: None),
            on_decision=record,
        )
        return list(scaler.run(duration=duration, handle_signals=handle_signals))

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _desired(desired: str | os.PathLike[str] | DesiredState) -> DesiredState:
        from torchship.ops.desired import load_desired

        return load_desired(desired) if isinstance(desired, (str, os.PathLike)) else desired


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def repackage_hint(archive: Path, name: str, threads: int) -> str | None:
    """The command that repackages `archive` with `threads` torch threads, or None when it has them.

    Threads live in the archive's model-config, not in anything TorchServe's API can set; an
    encrypted archive is repackaged encrypted.
    """
    from torchship.archiver.rekey import key_ids
    from torchship.perf.tune import packaged_threads

    if threads == packaged_threads(archive):
        return None
    encrypt = " --encrypt" if key_ids(archive) is not None else ""
    return f"torchship package {name} --threads {threads}{encrypt}"


def _read_yaml(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    if path is None:
        return {}
    import yaml

    return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
