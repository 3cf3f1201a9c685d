"""SLDPipeline: source texts -> segment latents (reverse diffusion) -> parallel decoding -> texts.

Generation follows the SLD paper (method.md, stage 3): the count head of the denoiser decides how
many segments each document gets, the denoiser samples one latent block (N, D) per real segment with
a diffusers scheduler and classifier-free guidance, and the autoencoder's decoder turns every
segment latent of every document in the batch into text in ONE batched ``generate`` call. Padded
segment slots are never decoded, so no filler text can reach an output. With ``num_candidates > 1``
each source gets several samples and the MBR choice (highest mean ROUGE-2 against the other
candidates) is returned.

A pipeline folder is self-contained: ``denoiser/`` (diffusers format), ``autoencoder/``
(``SegmentAutoencoder``), ``context_encoder/`` and ``pipeline_config.json``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch.profiler import record_function
from tqdm.auto import tqdm

from sld.diffusion.sampling import SchedulerName, choose_num_segments, make_scheduler, sample_latents
from sld.errors import UserError
from sld.mbr import mbr_select
from sld.models.autoencoder import SegmentAutoencoder
from sld.models.context_encoder import ContextEncoder, pad_context
from sld.models.denoiser import SegmentDiT
from sld.shapes import fold_segments

logger = logging.getLogger(__name__)

PIPELINE_CONFIG = "pipeline_config.json"
# With static_cache the source context is padded to a multiple of this many positions (few shapes)
CONTEXT_BUCKET = 32


@dataclass
class SamplingConfig:
    """Default generation settings of a pipeline (each can be overridden per call)."""

    scheduler: SchedulerName = "dpm++"
    num_inference_steps: int = 25
    guidance_scale: float = 2.0
    num_beams: int = 1
    no_repeat_ngram_size: int = 0
    count_mode: Literal["argmax", "sample"] = "argmax"


@dataclass
class PipelineConfig(SamplingConfig):
    """What the pipeline needs beyond its three models; saved as ``pipeline_config.json``.

    The sampling defaults, plus the training schedule the denoiser was trained with and its task.
    """

    prediction_type: str = "v_prediction"
    num_train_timesteps: int = 1000
    task: str = ""


@dataclass
class SLDOutput:
    """Result of one pipeline call; lists are per source, in input order.

    ``latents`` (when requested) holds, per source, the chosen candidate's (k, N, D) latents for its
    k segments. ``timings`` splits the wall time in seconds: ``context``, ``denoise``, ``decode``.
    """

    texts: list[str]
    segments: list[list[str]]
    num_segments: list[int]
    latents: list[torch.Tensor] | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SLDPipeline:
    """Text-to-text generation with a trained ``SegmentDiT``, ``SegmentAutoencoder`` and ``ContextEncoder``."""

    def __init__(
        self,
        denoiser: SegmentDiT,
        autoencoder: SegmentAutoencoder,
        context_encoder: ContextEncoder,
        config: PipelineConfig | None = None,
    ) -> None:
        self.denoiser = denoiser.eval()
        self.autoencoder = autoencoder.eval()
        self.context_encoder = context_encoder.eval()
        self.config = config or PipelineConfig()
        if (
            denoiser.config.latent_dim != autoencoder.latent_dim
            or denoiser.config.num_latents != autoencoder.num_latents
        ):
            raise UserError(
                f"denoiser latents ({denoiser.config.num_latents} x {denoiser.config.latent_dim}) do not match the "
                f"autoencoder's ({autoencoder.num_latents} x {autoencoder.latent_dim})"
            )

    # ------------------------------------------------------------------ saving and loading

    def save_pretrained(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.denoiser.save_pretrained(folder / "denoiser")
        self.autoencoder.save_pretrained(folder / "autoencoder")
        self.context_encoder.save_pretrained(folder / "context_encoder")
        (folder / PIPELINE_CONFIG).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        return folder

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> SLDPipeline:
        """Load a pipeline folder written by ``save_pretrained`` (or by ``sld train-diffusion``)."""
        folder = Path(folder)
        config_path = folder / PIPELINE_CONFIG
        if not config_path.is_file():
            raise UserError(f"{folder} is not an SLD pipeline folder: {PIPELINE_CONFIG} is missing")
        missing = [
            f"{name}/"
            for name in ("denoiser", "autoencoder", "context_encoder")
            if not (folder / name).is_dir()
        ]
        if missing:
            raise UserError(f"pipeline folder {folder} has no {', '.join(missing)} (an incomplete copy?)")
        try:
            config = PipelineConfig(**json.loads(config_path.read_text()))
        except (TypeError, json.JSONDecodeError) as err:
            raise UserError(f"{config_path}: {err}") from err
        # diffusers fills missing tensors with random values (a warning only): refuse such a folder
        denoiser, loading = SegmentDiT.from_pretrained(folder / "denoiser", output_loading_info=True)
        mismatch = {k: v for k, v in loading.items() if v and k != "error_msgs"}
        if mismatch:
            raise UserError(f"{folder / 'denoiser'}: the weights do not fit this SegmentDiT ({mismatch})")
        pipe = cls(
            denoiser,
            SegmentAutoencoder.from_pretrained(folder / "autoencoder"),
            ContextEncoder.from_pretrained(folder / "context_encoder"),
            config,
        )
        return pipe.to(device or ("cuda" if torch.cuda.is_available() else "cpu"), dtype)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> SLDPipeline:
        for module in (self.denoiser, self.autoencoder, self.context_encoder):
            module.to(device=device, dtype=dtype) if dtype is not None else module.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    @property
    def max_segments(self) -> int:
        return int(self.denoiser.config.max_segments)

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def __call__(
        self,
        sources: Sequence[str | None],
        num_inference_steps: int | None = None,
        scheduler: SchedulerName | None = None,
        guidance_scale: float | None = None,
        num_candidates: int = 1,
        num_beams: int | None = None,
        no_repeat_ngram_size: int | None = None,
        max_new_tokens: int | None = None,
        num_segments: Sequence[int] | None = None,
        count_mode: Literal["argmax", "sample"] | None = None,
        seed: int | None = None,
        batch_size: int = 64,
        return_latents: bool = False,
        progress: bool = False,
        min_new_tokens: int = 0,
        static_cache: bool = False,
    ) -> SLDOutput:
        """Generate one text per source (``None`` = unconditional).

        Settings left ``None`` take the saved ``pipeline_config.json`` defaults. ``num_segments``
        forces the segment count per source instead of the count head. ``batch_size`` counts
        documents per denoising batch (candidates included). ``max_new_tokens`` / ``min_new_tokens``
        bound every decoded segment (None = the autoencoder's saved budget; 0 = no minimum).
        ``static_cache``: decode segments from a static KV cache, the token step as a CUDA graph on a
        GPU (a causal-LM decoder only; ``sld.models.static_decoding``), and run the denoiser's steps
        as CUDA graphs too (``graphed_denoiser``; the context padded to a multiple of ``CONTEXT_BUCKET``).
        """
        cfg = self.config
        steps = num_inference_steps or cfg.num_inference_steps
        guidance = cfg.guidance_scale if guidance_scale is None else guidance_scale
        decode_options = {
            "max_new_tokens": max_new_tokens,
            "num_beams": num_beams or cfg.num_beams,
            "no_repeat_ngram_size": cfg.no_repeat_ngram_size
            if no_repeat_ngram_size is None
            else no_repeat_ngram_size,
        }
        if min_new_tokens > 0:
            decode_options["min_new_tokens"] = min_new_tokens
        decode_options["static_cache"] = static_cache
        if num_candidates < 1:
            raise UserError(f"num_candidates must be >= 1, got {num_candidates}")
        if num_segments is not None and len(num_segments) != len(sources):
            raise UserError(f"num_segments has {len(num_segments)} entries for {len(sources)} sources")
        generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        noise_scheduler = make_scheduler(
            scheduler or cfg.scheduler, cfg.num_train_timesteps, cfg.prediction_type
        )

        # Every candidate of every source is one row; rows are processed in batches.
        rows = [(i, src) for i, src in enumerate(sources) for _ in range(num_candidates)]
        texts: list[str] = []
        segments: list[list[str]] = []
        latents: list[torch.Tensor] = []
        timings = {"context": 0.0, "denoise": 0.0, "decode": 0.0}
        batches = range(0, len(rows), batch_size)
        for start in tqdm(batches, desc="generate", disable=not progress):
            chunk = rows[start : start + batch_size]
            forced = [num_segments[i] for i, _ in chunk] if num_segments is not None else None
            out = self._generate_batch(
                [src for _, src in chunk],
                noise_scheduler,
                steps,
                guidance,
                decode_options,
                forced,
                count_mode or cfg.count_mode,
                generator,
                timings,
            )
            texts += out[0]
            segments += out[1]
            latents += out[2]

        chosen = []
        for i in range(len(sources)):
            candidates = texts[i * num_candidates : (i + 1) * num_candidates]
            chosen.append(i * num_candidates + (mbr_select(candidates) if num_candidates > 1 else 0))
        return SLDOutput(
            texts=[texts[j] for j in chosen],
            segments=[segments[j] for j in chosen],
            num_segments=[len(segments[j]) for j in chosen],
            latents=[latents[j].cpu() for j in chosen] if return_latents else None,
            timings=timings,
        )

    def _generate_batch(
        self,
        sources: list[str | None],
        noise_scheduler,
        steps: int,
        guidance: float,
        decode_options: dict,
        forced_counts: list[int] | None,
        count_mode: str,
        generator: torch.Generator | None,
        timings: dict[str, float],
    ) -> tuple[list[str], list[list[str]], list[torch.Tensor]]:
        device = self.device
        started = time.perf_counter()
        # the record_function ranges name the phases in a torch.profiler summary (sld.eval.timing.profile_call)
        with record_function("sld.context"):
            static = decode_options["static_cache"]
            # static: the encoder a CUDA graph per bucketed length too (ContextEncoder.encode)
            context, context_mask = self.context_encoder.encode(sources, CONTEXT_BUCKET if static else None)
            context, context_mask = context.to(device, self.denoiser.dtype), context_mask.to(device)
            if static:  # a few context lengths, so that the denoiser's CUDA graphs are reused
                context, context_mask = pad_context(context, context_mask, CONTEXT_BUCKET)
            if forced_counts is not None:
                counts = torch.tensor(forced_counts, device=device).clamp(1, self.max_segments)
            else:
                logits = self.denoiser.predict_num_segments(context, context_mask)
                counts = choose_num_segments(logits, count_mode, generator)
            _synchronize(device)
        denoise_started = time.perf_counter()
        timings["context"] += denoise_started - started

        # Only as many segment slots as this batch's longest document needs (one host read per
        # batch): padded slots are masked out of the denoiser's attention, so they only cost time.
        slots = int(counts.max())
        segment_mask = torch.arange(slots, device=device)[None, :] < counts[:, None]  # (B, S')
        with record_function("sld.denoise"):
            z = sample_latents(
                self.denoiser,
                noise_scheduler,
                context,
                context_mask,
                segment_mask=segment_mask,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=generator,
                renormalize=self.autoencoder.normalize_latents,
                graphed=static,
            )  # (B, S', N, D)
            _synchronize(device)
        decode_started = time.perf_counter()
        timings["denoise"] += decode_started - denoise_started

        # Only real segments are decoded: (B, S') mask -> (B', N, D), all documents in one batch.
        real = fold_segments(z)[fold_segments(segment_mask)].to(self.autoencoder.dtype)
        with record_function("sld.decode"):
            decoded = self.autoencoder.decode_latents(real, **decode_options)
            _synchronize(device)
        timings["decode"] += time.perf_counter() - decode_started

        texts, segments, latents = [], [], []
        offset = 0
        for b, k in enumerate(counts.tolist()):
            parts = decoded[offset : offset + k]
            offset += k
            segments.append(parts)
            texts.append(" ".join(p for p in parts if p))
            latents.append(z[b, :k].float())
        return texts, segments, latents
