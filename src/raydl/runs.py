"""A run's directory, `<run.storage_path>/<run.name>`: a local path or an object-store URI.

Ray Train writes the checkpoints there (through a pyarrow filesystem for a URI); the driver writes
the resolved spec, `result.json` and the model directory. Every write is whole or absent: a file
by an atomic write (a rename locally, one PUT on an object store), the model directory by
`raydl.storage.publish_dir` (a directory swap locally; on an object store a temp prefix, copies
and a `_COMPLETE` marker written last, which readers check).

W&B's offline run needs a local directory: `<run dir>/wandb` for a local run, else
`$RAYDL_HOME/wandb/<run name>` on the node of the rank-0 worker.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from raydl import storage
from raydl.paths import output_dir
from raydl.runlock import raydl_home
from raydl.spec import JobSpec


@dataclass(frozen=True)
class RunDir:
    path: str  # absolute local path, or a URI

    @classmethod
    def of(cls, spec: JobSpec) -> RunDir:
        base = spec.run.storage_path
        if storage.is_uri(base):
            return cls(storage.join(base, spec.run.name))
        return cls(str(Path(base).expanduser().resolve() / spec.run.name))

    @property
    def remote(self) -> bool:
        return storage.is_uri(self.path)

    def join(self, *parts: str) -> str:
        return storage.join(self.path, *parts)

    def ray_storage(self) -> tuple[str, object | None]:
        """`RunConfig(storage_path, storage_filesystem)` for Ray Train: the parent of this directory
        (Ray adds the run name), scheme-less on its pyarrow filesystem for a URI."""
        if not self.remote:
            return str(Path(self.path).parent), None
        fs, path = storage.filesystem(self.path)
        return path.rsplit("/", 1)[0], fs

    def wandb_dir(self, name: str) -> str:
        return self.path if not self.remote else str(raydl_home() / "wandb" / name)

    def prepare(self, restart: bool) -> None:
        """Create the directory (or, with `restart`, empty it first)."""
        if restart:
            storage.remove_tree(self.path)
        if not self.remote:
            Path(self.path).mkdir(parents=True, exist_ok=True)

    def local_checkpoints(self) -> list[str]:
        """Checkpoint directories on local disk (a remote run's are read by the workers only)."""
        if self.remote:
            return []
        return [str(p) for p in sorted(Path(self.path).glob("checkpoint_*")) if p.is_dir()]

    def has_checkpoints(self) -> bool:
        return any(n.startswith("checkpoint_") for n in storage.listdir(self.path))

    def write_text(self, name: str, text: str) -> str:
        target = self.join(name)
        storage.write_bytes_atomic(target, text.encode())
        return target

    def read_json(self, *parts: str) -> dict:
        return json.loads(storage.read_bytes(self.join(*parts)))

    def publish(self, write, name: str = "model") -> str:
        """Write a directory with `write(local_dir)` and publish it as `<run dir>/<name>` whole."""
        if not self.remote:
            from raydl.paths import dir_swapped_in

            with dir_swapped_in(Path(self.join(name))) as tmp:
                write(Path(tmp))
            return self.join(name)
        with tempfile.TemporaryDirectory(prefix="raydl-publish-") as tmp:
            write(Path(tmp))
            return storage.publish_dir(Path(tmp), self.join(name))


def check_storage(storage_path: str) -> None:
    """Fail in seconds, with one line, when runs cannot be written under `storage_path`."""
    if storage.is_uri(storage_path):
        storage.check_writable(storage_path)
    else:
        output_dir(Path(storage_path).expanduser(), "run.storage_path")
