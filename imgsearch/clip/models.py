"""open_clip models: names, weights, and the recipe each set of weights must run with.

A set of weights gives the vectors its authors trained only when run as they trained it: the same image
preprocessing (mean, std, interpolation, resize mode) and the same activation (OpenAI's weights use QuickGELU).
open_clip applies a tag's recipe when weights are loaded *by tag*; for a checkpoint file it silently uses the
architecture's defaults, and for OpenAI's tags it builds plain GELU and only logs a warning. ``recipe_for``
decides the recipe for every way weights can be named, and ``load_model`` builds the model with it, in eval mode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import open_clip
import torch

from .. import architectures, checkpoints, hub
from ..config import MODEL_CONFIGS_ENV, ModelConfig
from ..errors import ModelLoadError, first_sentence

# What open_clip applies for a tag (its pretrained config) and for anything else (its PreprocessCfg defaults).
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")
# An open_clip model (CLIP, CustomTextCLIP, CoCa): without stubs, and torch.nn.Module's __getattr__ would type each of
# its attributes (visual, encode_image...) as Tensor | Module.
ClipModel = Any

_DEFAULTS: dict[str, Any] = {
    "mean": tuple(open_clip.OPENAI_DATASET_MEAN),
    "std": tuple(open_clip.OPENAI_DATASET_STD),
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def register_extra_model_configs() -> None:
    """Let open_clip see JSON architectures from $IMGSEARCH_MODEL_CONFIGS (custom or test models)."""
    extra = os.environ.get(MODEL_CONFIGS_ENV)
    if extra and extra not in {str(p) for p in open_clip.factory._MODEL_CONFIG_PATHS}:
        open_clip.add_model_config(extra)


def resolve_device(requested: str = "auto") -> str:
    """A torch device string; a bad name or an absent GPU is a ModelLoadError naming the choices."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ModelLoadError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N (mps on Apple)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {requested!r} asked for, but torch sees no CUDA GPU here; use cpu or auto")
    return requested


# -- recipes ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """How one set of weights is run: open_clip's preprocessing and activation for the tag they were published
    under (``tag``), or the architecture's defaults (``tag`` None). ``source`` says how it was decided."""

    tag: str | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    resize_mode: str
    quick_gelu: bool
    source: str = ""

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        return {**data, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        return cls(
            data.get("tag"),
            tuple(data["mean"]),
            tuple(data["std"]),
            data["interpolation"],
            data["resize_mode"],
            bool(data["quick_gelu"]),
            data.get("source", ""),
        )

    def runs_like(self, other: Recipe) -> bool:
        """Whether both give the same vectors (the tag and the reason aside)."""
        return dataclasses.replace(self, tag=None, source="") == dataclasses.replace(other, tag=None, source="")

    @property
    def summary(self) -> str:
        act = "QuickGELU" if self.quick_gelu else "GELU"
        mean = "/".join(f"{v:g}" for v in self.mean)
        return f"{self.tag or 'architecture defaults'}: mean {mean}, {self.interpolation}, {self.resize_mode}, {act}"


def _architecture_gelu(name: str) -> bool:
    config = open_clip.get_model_config(name) or {}
    return bool(config.get("quick_gelu"))


def _tag_recipe(name: str, tag: str, source: str) -> Recipe:
    cfg = open_clip.get_pretrained_cfg(name, tag)
    values = {k: cfg.get(k, _DEFAULTS[k]) for k in _PREPROCESS_KEYS}
    return Recipe(
        tag,
        tuple(values["mean"]),
        tuple(values["std"]),
        values["interpolation"],
        values["resize_mode"],
        bool(cfg.get("quick_gelu")) or _architecture_gelu(name),
        source,
    )


def _default_recipe(name: str, source: str) -> Recipe:
    return Recipe(
        None,
        _DEFAULTS["mean"],
        _DEFAULTS["std"],
        _DEFAULTS["interpolation"],
        _DEFAULTS["resize_mode"],
        _architecture_gelu(name),
        source,
    )


def legacy_recipe(config: ModelConfig) -> Recipe:
    """What imgsearch up to 0.1 ran: a tag's preprocessing without its QuickGELU, the defaults for anything else."""
    register_extra_model_configs()
    if (
        config.pretrained
        and not checkpoints.is_path(config.pretrained)
        and open_clip.get_pretrained_cfg(config.name, config.pretrained)
    ):
        recipe = _tag_recipe(config.name, config.pretrained, "imgsearch 0.1")
        return dataclasses.replace(recipe, quick_gelu=_architecture_gelu(config.name))
    return _default_recipe(config.name, "imgsearch 0.1")


def recipe_for(config: ModelConfig) -> Recipe:
    """The recipe for a model's weights: its tag's; for a checkpoint file, the tag named by ``pretrained_as``, the
    tag it is recognised as, or the one recipe all of the architecture's published weights share. A file of an
    architecture whose published weights run in different ways, and that is not recognised, is refused: guessing
    would give vectors that look right and are not."""
    register_extra_model_configs()
    name, pretrained, tied = config.name, config.pretrained, config.pretrained_as
    tags = open_clip.list_pretrained_tags_by_model(name)
    if tied is not None:
        if pretrained and not checkpoints.is_path(pretrained) and tied != pretrained:
            raise ModelLoadError(f"--pretrained-as names the tag of a checkpoint file; {pretrained!r} is a tag itself")
        if tied == "none":
            return _default_recipe(name, "the architecture's defaults (--pretrained-as none)")
        if tied not in tags:
            raise ModelLoadError(f"unknown pretrained tag {tied!r} for {name}; {_closest(tied, tags)}")
        return _tag_recipe(name, tied, "--pretrained-as")
    if pretrained is None:
        return _default_recipe(name, "random weights: the architecture's defaults")
    if not checkpoints.is_path(pretrained):
        return _tag_recipe(name, pretrained, "its tag")
    return _file_recipe(name, pretrained, tags)


def _file_recipe(name: str, path: str, tags: list[str]) -> Recipe:
    found = _recognised_tag(name, path, tags)
    if found is not None:
        return _tag_recipe(name, found[0], f"recognised as {found[0]} by {found[1]}")
    if not tags:
        return _default_recipe(name, f"the architecture's defaults (open_clip publishes no weights for {name})")
    recipes = {t: _tag_recipe(name, t, "") for t in tags}
    first = next(iter(recipes.values()))
    if all(r.runs_like(first) for r in recipes.values()):
        return dataclasses.replace(first, tag=None, source=f"the recipe every published {name} checkpoint shares")
    groups: dict[str, list[str]] = {}
    for tag, recipe in recipes.items():
        groups.setdefault(dataclasses.replace(recipe, tag=None).summary.split(": ", 1)[1], []).append(tag)
    ways = "; ".join(f"{', '.join(t[:4])}{' ...' if len(t) > 4 else ''}: {way}" for way, t in groups.items())
    raise ModelLoadError(
        f"{path} is a {name} checkpoint, and {name}'s published weights are run in different ways ({ways}); "
        "which it holds cannot be told from the file",
        cli_hint="name its tag with --pretrained-as TAG (or --pretrained-as none if it is none of them: the "
        "architecture's defaults)",
        api_hint="name its tag with ModelConfig(pretrained_as=TAG) (or 'none' for the architecture's defaults)",
    )


def _recognised_tag(name: str, path: str, tags: list[str]) -> tuple[str, str] | None:
    """(tag, how) for a file that is one of open_clip's downloads: by its Hugging Face cache folder
    (``models--ORG--REPO``), or by the SHA-256 in the download address of OpenAI's and LAION's direct links."""
    parts = os.path.abspath(path).split(os.sep)
    repos = {p[len("models--") :].replace("--", "/", 1) for p in parts if p.startswith("models--")}
    for tag in tags:
        cfg = open_clip.get_pretrained_cfg(name, tag)
        hub = (cfg.get("hf_hub") or "").strip("/")
        if hub and hub.rsplit("/", 1)[0] in repos or hub in repos:
            return tag, "its Hugging Face cache folder"
    for tag in tags:
        url = open_clip.get_pretrained_cfg(name, tag).get("url") or ""
        expected = _url_sha256(url)
        if expected and os.path.basename(url) == os.path.basename(path) and _sha256(path).startswith(expected):
            return tag, "its SHA-256"
    return None


def _url_sha256(url: str) -> str:
    if "openaipublic" in url:
        return url.split("/")[-2]
    if "mlfoundations" in url:
        return os.path.splitext(os.path.basename(url))[0].split("-")[-1]
    return ""


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _closest(wanted: str, choices: list[str]) -> str:
    """ "available: ..." with the closest matches first."""
    if not choices:
        return "it has no published weights (pass a checkpoint file, or none)"
    near = difflib.get_close_matches(wanted, choices, n=5, cutoff=0.3)
    rest = [c for c in choices if c not in near]
    shown, more = rest[:8], len(rest) - 8
    others = ", ".join(shown) + (
        f" and {more} more (`imgsearch models`, open_clip.list_pretrained())" if more > 0 else ""
    )
    return f"closest: {', '.join(near)}; others: {others}" if near else f"available: {others}"


# -- checks before anything is built --------------------------------------------------------------------------
def check_model_name(name: str) -> None:
    register_extra_model_configs()
    if name not in open_clip.list_models() and not name.startswith(("hf-hub:", "local-dir:")):
        near = difflib.get_close_matches(name, open_clip.list_models(), n=5, cutoff=0.4)
        raise ModelLoadError(
            f"unknown model {name!r}; {'closest: ' + ', '.join(near) + '; ' if near else ''}choose one of "
            f"open_clip's models (`imgsearch models` lists recommended ones; "
            f"`python -c 'import open_clip; print(open_clip.list_models())'` lists all) or set {MODEL_CONFIGS_ENV} "
            "to a folder with its JSON config"
        )


def _check_pretrained(name: str, pretrained: str | None) -> None:
    if pretrained is None or os.path.exists(pretrained):
        return
    if checkpoints.is_path(pretrained):
        raise ModelLoadError(
            f"checkpoint file not found: {pretrained}",
            cli_hint="check the --pretrained path",
            api_hint="check ModelConfig.pretrained",
        )
    tags = open_clip.list_pretrained_tags_by_model(name)
    if tags and pretrained not in tags:
        raise ModelLoadError(f"unknown pretrained tag {pretrained!r} for {name}; {_closest(pretrained, tags)}")
    _check_downloadable(name, pretrained)


def _check_downloadable(name: str, tag: str) -> None:
    """Fail in seconds, with what to do, when weights are neither cached nor reachable.

    Without this, huggingface_hub retries an unreachable host for about a minute per file.
    """
    if weights_cached(name, tag):
        return
    cfg = open_clip.get_pretrained_cfg(name, tag) or {}
    repo = os.path.split(cfg.get("hf_hub") or "")[0].rstrip("/")
    source = f"{hub.endpoint()}/{repo}" if repo else cfg.get("url", "")
    problem = hub.offline_problem(source)
    if problem:
        raise ModelLoadError(
            f"the weights of {name} ({tag}) are not cached and cannot be downloaded: {problem}. "
            f"They come from {source}",
            cli_hint="download them on a machine with internet (or copy its ~/.cache/huggingface) and pass the "
            f"file with --pretrained /path/to/open_clip_model.safetensors --pretrained-as {tag}; "
            "or try the tool with --pretrained none (random weights: results are meaningless)",
            api_hint="download them on a machine with internet and pass the file as "
            f"ModelConfig(pretrained='/path/to/open_clip_model.safetensors', pretrained_as={tag!r})",
        )


def _check_text_side(name: str, config: dict) -> None:
    """Models whose tokenizer (or text tower) comes from the Hugging Face hub need ``transformers`` and those files
    cached or reachable: say so before the model is built, naming the package and the files."""
    tokenizer_repo, text_repo = architectures.hf_text(config)
    if not (tokenizer_repo or text_repo):
        return
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ModelLoadError(
            f"{name} tokenizes text with Hugging Face's tokenizer for {tokenizer_repo or text_repo}, which needs the "
            "transformers package; install it with `pip install transformers` (or `pip install 'imgsearch[hf]'`)"
        ) from None
    for repo, files, what in (
        (tokenizer_repo, _TOKENIZER_FILES, "tokenizer"),
        (text_repo, ("config.json",), "text tower's configuration"),
    ):
        if not repo or hub.cached(repo, files):
            continue
        problem = hub.offline_problem(f"{hub.endpoint()}/{repo}")
        if problem:
            cached_as = f"models--{repo.replace('/', '--')}"
            raise ModelLoadError(
                f"the {what} of {name} (Hugging Face repo {repo}: {', '.join(files)}) is not cached and cannot be "
                f"downloaded: {problem}; run any imgsearch command with this model once where there is internet, or "
                f"copy {cached_as} from a Hugging Face cache there (~/.cache/huggingface/hub) into this one"
                f"{' ($HF_HOME/hub)' if os.environ.get('HF_HOME') else ''}"
            )


def weights_cached(name: str, tag: str) -> bool:
    """Whether open_clip's weights for (name, tag) are in the local cache already (no download needed)."""
    cfg = open_clip.get_pretrained_cfg(name, tag) or {}
    repo, filename = os.path.split(cfg.get("hf_hub") or "")
    repo = repo.rstrip("/")
    if not repo:
        return _cached_url(cfg.get("url") or "")
    return hub.cached(repo, hub.weight_files(filename))


def _cached_url(url: str) -> bool:
    return bool(url) and os.path.isfile(os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url)))


# -- building -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Loaded:
    """A model in eval mode with its inference transform (PIL -> tensor), tokenizer and recipe."""

    model: ClipModel
    preprocess: Callable
    tokenizer: Callable
    recipe: Recipe


def load_model(config: ModelConfig, device: str) -> Loaded:
    """Create the model on device with its recipe, in eval mode; raises ModelLoadError with a fix."""
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # its import resets it; retries are noise
    check_model_name(config.name)
    _check_pretrained(config.name, config.pretrained)
    recipe = recipe_for(config)
    _check_text_side(config.name, open_clip.get_model_config(config.name) or {})
    try:
        with _seeded_if_random(config.pretrained), _quiet_open_clip():
            model, _, preprocess = open_clip.create_model_and_transforms(
                config.name,
                pretrained=config.pretrained,
                device=device,
                force_quick_gelu=recipe.quick_gelu and not _architecture_gelu(config.name),
                image_mean=recipe.mean,
                image_std=recipe.std,
                image_interpolation=recipe.interpolation,
                image_resize_mode=recipe.resize_mode,
                pretrained_text=config.pretrained is not None,  # random weights: no text weights downloaded
            )
            tokenizer = open_clip.get_tokenizer(config.name)
    except Exception as exc:  # network, hub, corrupt checkpoint, out of memory
        download = isinstance(exc, (OSError, ConnectionError)) or "huggingface" in type(exc).__module__
        raise ModelLoadError(
            f"could not load {config.label}: {first_sentence(exc)}",
            cli_hint="if the download failed, fetch the checkpoint elsewhere and pass it with --pretrained FILE"
            if download
            else None,
            api_hint="if the download failed, fetch the checkpoint elsewhere and pass ModelConfig(pretrained=FILE)"
            if download
            else None,
        ) from exc
    model.eval()
    return Loaded(model, preprocess, tokenizer, recipe)


@contextlib.contextmanager
def _quiet_open_clip():
    """open_clip logs "no pretrained weights loaded" and warns on a QuickGELU mismatch through the root logger and
    warnings, into the user's output; the recipe is decided here, and says all of that."""
    import warnings

    root = logging.getLogger()
    before = root.level
    root.setLevel(max(before, logging.ERROR))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="QuickGELU mismatch")
            yield
    finally:
        root.setLevel(before)


def _seeded_if_random(pretrained: str | None):
    """Random-weight models are seeded so every process builds the same one (tests, debugging)."""
    if pretrained is not None:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.random.fork_rng(devices=[]))
    torch.manual_seed(0)
    return stack


def training_sensitive(model: torch.nn.Module) -> list[str]:
    """The kinds of module in ``model`` that compute differently in training mode (batch statistics, dropout,
    drop-path, patch dropout): where a model left in training mode gives wrong vectors."""
    found = set()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            found.add("BatchNorm")
        elif isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p > 0:
            found.add("dropout")
        elif type(module).__name__ in ("DropPath", "StochasticDepth") and getattr(module, "drop_prob", None):
            found.add("drop-path")
        elif type(module).__name__ == "PatchDropout" and getattr(module, "prob", None):
            found.add("patch dropout")
        elif isinstance(module, torch.nn.MultiheadAttention) and module.dropout > 0:
            found.add("attention dropout")
    return sorted(found)


def preprocess_cfg(model: ClipModel) -> dict:
    """The model's image transform as a config: size, mean, std, interpolation, resize mode."""
    cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    if not cfg:
        cfg = {"size": model.visual.image_size, **_DEFAULTS}
    return cfg


def model_dim(config: ModelConfig) -> int:
    """Embedding size from the architecture config, without creating the model."""
    return int(_architecture_or_raise(config)["embed_dim"])


def model_image_size(config: ModelConfig) -> int:
    """The image tower's input side from the architecture config, without creating the model."""
    return architectures.input_side(_architecture_or_raise(config))


def _architecture_or_raise(config: ModelConfig) -> dict:
    register_extra_model_configs()
    cfg = open_clip.get_model_config(config.name)
    if cfg is None:
        check_model_name(config.name)
        raise ModelLoadError(f"no config found for model {config.name!r}")
    return cfg
