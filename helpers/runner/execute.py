"""Executing one notebook: papermill with the project's kernel, the failing cell's one line, offline HTML."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from helpers.paths import NOTEBOOKS, REPORTS

KERNEL = "python3"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def kernel_manager_class():
    """papermill's kernel manager with CurveZMQ transport encryption when the kernel supports it.

    ipykernel >= 7.3 warns on every start of a kernel bound over TCP without encryption; the
    kernel installed by `make setup` declares curve support, so this encrypts and the warning goes.
    """
    from jupyter_client.manager import AsyncKernelManager

    class EncryptedKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.transport_encryption = "auto"

        async def _async_interrupt_kernel(self):
            # jupyter_client sends SIGINT before every shutdown; our kernels are idle by then, and a
            # signal landing in a message handler prints "KeyboardInterrupt caught in kernel" into
            # the runner's output. A timeout's interrupt (nbclient) goes through interrupt_kernel.
            if self.shutting_down:
                return
            await super()._async_interrupt_kernel()

    return EncryptedKernelManager


class NotebookFailed(Exception):
    """A notebook cell raised. ``line`` is the last line the cell's error showed."""

    def __init__(self, name: str, cell: int | None, ename: str, line: str):
        self.name, self.cell, self.ename, self.line = name, cell, ename, line
        where = f"cell {cell}" if cell is not None else "a cell"
        super().__init__(f"{name}: {where} failed: {line}")


def notebook_names() -> list[str]:
    return sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def execute(name: str, parameters: dict | None = None, output_dir: str | Path | None = None,
            cwd: str | Path | None = None, progress: bool = False, html: bool = False,
            source: str | Path | None = None, reports: str | Path | None = None,
            cell_timeout: float | None = None, kernel_manager=None) -> dict:
    """Execute ``notebooks/<name>.ipynb`` with papermill; return its summary.json as a dict.

    The executed notebook is written as ``<output_dir>/<name>.ipynb`` (and
    ``.html`` with ``html=True``, its MathJax in ``<reports>/_static/``, ``reports`` defaulting
    to ``output_dir``); ``output_dir`` is passed to the notebook too. ``cell_timeout`` bounds
    each cell in seconds (None: no bound): a cell past it fails the execution like an error.
    Raises :class:`NotebookFailed` with the failing cell's error line. ``source``
    executes another notebook file under that name (the bench's import-only floor
    notebooks); one that writes no summary.json returns ``{}``.

    ``kernel_manager``: a started kernel (jupyter_client ``KernelManager``) to execute in instead of
    a new one, for a caller that executes many notebooks (the test suite): its namespace and input
    history are reset and its working directory set to ``cwd`` first, and it is left running. The
    libraries an earlier notebook imported stay imported: that is what it saves.
    """
    import papermill as pm

    out = Path(output_dir) if output_dir else REPORTS / name
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    params = {**(parameters or {}), "output_dir": str(out)}
    executed = out / f"{name}.ipynb"
    # shutdown_kernel="immediate": once the last cell has run (summary.json and figures written), the kernel
    # is killed instead of asked to exit; a graceful exit of a kernel holding torch & co. took 1.5-2.7 s.
    kw = {"shutdown_kernel": "immediate"}
    if kernel_manager is not None:
        reset_kernel(kernel_manager, Path(cwd) if cwd else Path.cwd())
        kw = {"km": kernel_manager}
    try:
        for attempt in (1, 2):
            try:
                pm.execute_notebook(str(source or NOTEBOOKS / f"{name}.ipynb"), str(executed), parameters=params,
                                    kernel_name=KERNEL, cwd=str(cwd) if cwd else None,
                                    progress_bar=progress, log_output=False,
                                    kernel_manager_class=kernel_manager_class(),
                                    execution_timeout=cell_timeout, store_widget_state=False, **kw)
                break
            except RuntimeError as exc:
                # jupyter_client picks free ports, then the kernel binds them: another process starting at
                # that moment can take one ("Address already in use"), and the kernel dies before any cell
                # ran. Nothing of the notebook executed, so one new start is safe.
                if attempt == 2 or "Kernel died before replying to kernel_info" not in str(exc):
                    raise
    except pm.PapermillExecutionError as exc:
        lines = [_ANSI.sub("", t) for t in exc.traceback if t.strip()]
        last = lines[-1].strip().splitlines()[-1] if lines else f"{exc.ename}: {exc.evalue}"
        raise NotebookFailed(name, exc.exec_count, exc.ename, last) from None
    finally:
        if html and executed.exists():
            to_html(executed, Path(reports) if reports else out)
    if source is not None and not (out / "summary.json").exists():
        return {}
    return json.loads((out / "summary.json").read_text())


def start_kernel():
    """A started kernel of the project's kind (encrypted transport, as :func:`kernel_manager_class`) for a caller
    that executes many notebooks into it (``execute(..., kernel_manager=...)``); the caller shuts it down."""
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name=KERNEL)
    km.transport_encryption = "auto"
    km.start_kernel()
    return km


def _ready_client(kernel_manager, retry: bool, timeout: float = 60):
    """A started client the kernel has answered. Just after a restart, a client whose encrypted channels
    connect while the kernel is still binding them can stay unanswered (seen here in one restart of four),
    while a new client is answered at once: then each try waits 3 s, with a new client."""
    deadline = time.monotonic() + timeout
    while True:
        client = kernel_manager.client()
        client.start_channels()
        try:
            client.wait_for_ready(timeout=3 if retry else timeout)
            return client
        except RuntimeError:
            client.stop_channels()
            if not retry or time.monotonic() > deadline or not kernel_manager.is_alive():
                raise


def reset_kernel(kernel_manager, cwd: Path) -> None:
    """A clean namespace and input history (the parameter check reads it) in ``cwd``; a kernel that died
    (an earlier notebook crashed it) is started again."""
    restarted = not kernel_manager.is_alive()
    if restarted:
        kernel_manager.restart_kernel(now=True)
    client = _ready_client(kernel_manager, retry=restarted)
    try:
        reply = client.execute_interactive(f"%reset -f\nimport os\nos.chdir({str(cwd)!r})\ndel os", timeout=60,
                                           output_hook=lambda msg: None)
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"resetting the kernel failed: {reply['content'].get('evalue')}")
    finally:
        client.stop_channels()


def to_html(executed: Path, reports: Path | None = None) -> Path:
    """HTML of an executed notebook that renders offline, math included, and travels.

    MathJax is the copy in ``<reports>/_static/`` (``reports`` defaults to the notebook's own
    folder), linked relatively: the folder can be copied elsewhere or served over HTTP. Nothing
    is loaded from ``file://`` or a CDN: require.js (widgets) and mermaid are never used here.
    """
    from nbconvert import HTMLExporter

    from helpers.runner.reports import mathjax_url

    path = Path(executed).with_suffix(".html")
    url = mathjax_url(path, Path(reports) if reports is not None else path.parent)
    empty = "data:text/javascript,"  # an empty script instead of a CDN fetch
    exporter = HTMLExporter(mathjax_url=url, require_js_url=empty, mermaid_js_url=empty, mermaid_layout_elk_js_url="")
    body, _ = exporter.from_filename(str(executed))
    path.write_text(body)
    return path
