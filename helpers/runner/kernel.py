"""The project's kernel talks to every client over an encrypted transport.

ipykernel warns at every start of a kernel bound over TCP without encryption. jupyter_client
encrypts (CurveZMQ) only when the client's kernel manager asks for it, which papermill run from
the command line, JupyterLab and nbclient do not. The kernelspec that ``make setup`` installs
names :class:`EncryptedProvisioner` (an entry point of ``jupyter_client.kernel_provisioners``):
it asks for encryption whatever the client, so plain ``papermill`` runs as quiet as ``make run``.

``python -m helpers.runner.kernel`` points the installed ``python3`` kernelspec at it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from jupyter_client.provisioning import LocalProvisioner

NAME = "workbooks-encrypted-provisioner"


class EncryptedProvisioner(LocalProvisioner):
    """A local kernel with CurveZMQ transport encryption when the kernelspec declares support."""

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        km = self.parent
        if "transport_encryption" not in kwargs and getattr(km, "transport_encryption", "disabled") == "disabled":
            kwargs["transport_encryption"] = "auto"
        return await super().pre_launch(**kwargs)


def install(kernel_dir: Path) -> Path:
    """Name the provisioner in ``kernel_dir/kernel.json`` (idempotent)."""
    spec_file = Path(kernel_dir) / "kernel.json"
    spec = json.loads(spec_file.read_text())
    spec.setdefault("metadata", {})["kernel_provisioner"] = {"provisioner_name": NAME, "config": {}}
    spec_file.write_text(json.dumps(spec, indent=1) + "\n")
    return spec_file


if __name__ == "__main__":
    prefix = Path(sys.prefix) / "share" / "jupyter" / "kernels" / "python3"
    print(f"kernel {install(Path(sys.argv[1]) if len(sys.argv) > 1 else prefix)}: encrypted transport")
