"""What every command shares: the Typer apps, the common options, opening a collection, how errors and progress
are shown. The CLI is the only part of imgsearch that prints or exits."""

from __future__ import annotations

import json
import math
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import typer

from ..config import BACKENDS, COLLECTION_ENV, ModelConfig
from ..errors import ImgsearchError

# rich_markup_mode=None: rich markup would swallow "[default: ...]" in help texts.
app = typer.Typer(
    help="Semantic image search: index folders of images with CLIP, then search them by text or image.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
texts_app = typer.Typer(
    help="Manage the text collection used for image -> text search.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(texts_app, name="texts")
cache_app = typer.Typer(
    help="The cache of exported models ($IMGSEARCH_CACHE): list, remove, prune.",
    rich_markup_mode=None,
    invoke_without_command=True,
)
app.add_typer(cache_app, name="cache")


def _show_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"imgsearch {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_show_version, help="Print the version and exit."
    ),
) -> None:
    pass  # the app's help text is the Typer(help=...) above


CollectionOpt = typer.Option(
    None,
    "--collection",
    "--index",  # its name before 0.2: the folder is a collection, not the FAISS index inside it
    envvar=COLLECTION_ENV,
    show_envvar=True,
    metavar="PATH",
    help="Collection folder [default: ~/.local/share/imgsearch/default, or $XDG_DATA_HOME/imgsearch/default].",
)
ModelOpt = typer.Option(
    None, "--model", metavar="NAME", help="open_clip model name for a new collection [default: ViT-B-32]."
)
PretrainedOpt = typer.Option(
    None,
    "--pretrained",
    metavar="TAG|FILE",
    help="Pretrained tag [default: laion2b_s34b_b79k], a local checkpoint file for offline use (a moved file is "
    "recognised by its content), or 'none' for random weights.",
)
PretrainedAsOpt = typer.Option(
    None,
    "--pretrained-as",
    metavar="TAG|none",
    help="The open_clip tag a --pretrained checkpoint file holds, so that it runs with that tag's preprocessing and "
    "activation (recognised by itself when the file sits in the Hugging Face cache); 'none': the "
    "architecture's defaults.",
)
DeviceOpt = typer.Option(
    None, "--device", metavar="DEVICE", help="Torch device: cpu, cuda, cuda:1 [default: cuda if available, else cpu]."
)
BackendOpt = typer.Option(
    None,
    "--backend",
    metavar="auto|torch|onnx|onnx-int8|openvino|openvino-int8",
    help="What runs the model on CPU: torch, onnx (ONNX Runtime fp32; exported once per model and cached), "
    "onnx-int8 (its image tower quantized to int8; never picked by auto), openvino (the exported image "
    "tower, bf16 where the CPU has it) or openvino-int8 (its MLP layers in int8, made once) [default: auto: "
    "openvino when installed and it passed its check (openvino-int8 on CPUs with VNNI where that passed), else "
    "torch with bf16 weights on CPUs with native bf16, else onnx. Indexing from the export and queries never "
    "import torch once the export is cached].",
)
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of text.")
WaitOpt = typer.Option(
    True,
    "--wait/--no-wait",
    help="While another imgsearch process writes to the collection, wait for it (with a message) or fail at once.",
)


def model_config(name: str | None, pretrained: str | None, pretrained_as: str | None = None) -> ModelConfig | None:
    if name is None and pretrained is None and pretrained_as is None:
        return None  # the collection's own model, or the default for a new one
    default = ModelConfig()
    tag = default.pretrained if pretrained is None else (None if pretrained.lower() == "none" else pretrained)
    if pretrained is not None and tag and Path(tag).expanduser().exists():
        tag = str(Path(tag).expanduser().absolute())  # not resolved: a Hugging Face cache path names its tag
    return ModelConfig(name=name or "", pretrained=tag, pretrained_as=pretrained_as)  # "": the collection's name


def check_backend(backend: str | None) -> None:
    if backend is not None and backend not in BACKENDS:
        fail(f"--backend: unknown backend {backend!r}; use {', '.join(BACKENDS)}", 2)


def open_collection(
    index: Path | None, model=None, pretrained=None, device=None, backend=None, wait=False, pretrained_as=None
):
    check_backend(backend)
    folder = index or "the collection"

    def waiting() -> None:
        typer.echo(
            f"imgsearch: another imgsearch process is writing to {folder}; waiting for it to finish "
            "(Ctrl-C to stop, --no-wait to fail at once)",
            err=True,
        )

    from .. import api  # imported when a command needs it: a query through a server never does

    return api.open(
        index,
        model=model_config(model, pretrained, pretrained_as),
        device=device,
        backend=backend,
        wait=math.inf if wait else 0.0,
        on_wait=waiting,
    )


def warn(messages) -> None:
    for message in messages:
        typer.echo(f"imgsearch: warning: {message}", err=True)


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"imgsearch: error: {message}", err=True)
    raise typer.Exit(code)


@contextmanager
def user_errors():
    """Library errors become one line on stderr and exit code 1; Ctrl-C exits 130."""
    try:
        yield
    except ImgsearchError as exc:
        fail(exc.for_cli())
    except KeyboardInterrupt:
        typer.echo("\nimgsearch: interrupted; work done so far is saved, run the command again to resume", err=True)
        raise typer.Exit(130) from None


def print_json(data) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


# A stage with no progress to count (loading a model, exporting it on its first run) still shows its time passing,
# or it looks frozen: 0.1's bar sat at "loading model: 0% 0/956 [00:00<?]" through an 85 s first export.
TICK_SECONDS = 1.0


@contextmanager
def progress_bar(description: str, unit: str, enabled: bool = True, tick: float = TICK_SECONDS):
    """A progress bar on stderr, drawn only for a person: not when stderr is a file or a pipe. Redrawn every
    ``tick`` seconds, so its elapsed time moves while a stage has nothing to count yet."""
    import threading

    from tqdm import tqdm

    enabled = enabled and sys.stderr.isatty()
    shown: dict = {"stage": description, "bar": None}  # the bar appears with the first progress, not before
    lock, stop = threading.Lock(), threading.Event()

    def ticking() -> None:
        while not stop.wait(tick):
            with lock:
                shown["bar"].refresh()

    ticker = threading.Thread(target=ticking, name="imgsearch-progress", daemon=True)

    def update(done: int, total: int, stage: str | None = None) -> None:
        if not enabled:
            return
        with lock:
            bar = shown["bar"]
            if bar is None:
                bar = shown["bar"] = tqdm(desc=stage or description, unit=unit, file=sys.stderr, dynamic_ncols=True)
                ticker.start()
            elif stage and shown["stage"] != stage:
                bar.set_description(stage, refresh=False)
                bar.reset(total)  # the rate and the time left count from this stage's start, not the model's loading
            shown["stage"] = stage or shown["stage"]
            bar.total = total
            bar.n = done
            bar.refresh()

    try:
        yield update
    finally:
        stop.set()
        if ticker.is_alive():
            ticker.join()
        if shown["bar"] is not None:
            shown["bar"].close()
