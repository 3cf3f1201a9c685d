"""Tiny seeded models shared by the tests.

* ``tiny_dit``: the denoiser, objective and sampling tests (N=4, D=8, S=3, C=16);
* ``save_tiny_bert`` + ``tiny_autoencoder``: a random BERT folder and a frozen-BERT autoencoder with
  a from-config T5 decoder (N=LATENTS, D=WIDTH), for the visualisation and report tests;
* ``tiny_pipeline`` / ``tiny_baseline``: an SLDPipeline over such an autoencoder and an AR baseline
  on the same BERT, for the loading and generation tests.
"""

from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizer

from sld.losses import conversion_loss
from sld.models.autoencoder import AutoencoderConfig, SegmentAutoencoder
from sld.models.baseline import BaselineConfig, BaselineModel
from sld.models.context_encoder import ContextEncoder
from sld.models.denoiser import SegmentDiT
from sld.pipeline import PipelineConfig, SLDPipeline

PAIRS = [
    (
        "Anna walked her dog in the park.",
        "Anna took her dog for a walk in the park.",
        "Stocks fell sharply on Monday.",
    ),
    ("Tom baked a cake for his mother.", "Tom made his mother a cake.", "The senate passed the budget bill."),
    (
        "The kids played soccer after school.",
        "After school the kids played soccer.",
        "Oil prices rose by 3 percent.",
    ),
    ("Lucy lost her keys at the mall.", "At the mall, Lucy lost her keys.", "The storm closed two airports."),
    ("Sam fixed the old bike.", "Sam repaired the old bicycle.", "Officials said the talks had stalled."),
]
CORPUS = [text for row in PAIRS for text in row] * 3
LATENTS, WIDTH = 4, 16
# the from-config T5 decoder of the tiny autoencoder and the tiny AR baseline
TINY_T5 = dict(
    model_type="t5", d_model=32, d_kv=8, d_ff=64, num_decoder_layers=1, num_heads=4, dropout_rate=0.0
)


def tiny_dit(**overrides) -> SegmentDiT:
    """A seeded 3-block, width-32 SegmentDiT; keyword arguments override its config."""
    kwargs = dict(latent_dim=8, num_latents=4, max_segments=3, context_dim=16, width=32, depth=3, heads=4)
    kwargs.update(overrides)
    torch.manual_seed(0)
    return SegmentDiT(**kwargs)


def randomize_zero_init(model: torch.nn.Module, std: float = 0.05) -> None:
    """Give zero-initialised tensors (adaLN-Zero, output projection, biases) random values so outputs are non-trivial."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if torch.count_nonzero(p) == 0:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def save_tiny_bert(folder: Path, num_layers: int = 1, max_positions: int = 96) -> str:
    """A seeded random BERT (width 24) with a character-level wordpiece vocabulary, saved to ``folder``."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz0123456789.,!?'#%"]
    words += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=24,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=max_positions,
    )
    torch.manual_seed(1)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(str(folder))
    return str(folder)


def tiny_autoencoder(bert: str, seed: int) -> SegmentAutoencoder:
    config = AutoencoderConfig(
        encoder=bert,
        freeze_encoder=True,
        decoder_config=dict(TINY_T5),
        decoder_vocab_size=300,
        num_latents=LATENTS,
        latent_dim=WIDTH,
        compressor_layers=1,
        compressor_heads=4,
        reconstructor_layers=1,
        dropout=0.0,
        max_segment_tokens=16,
    )
    torch.manual_seed(seed)
    return SegmentAutoencoder.from_config(config, CORPUS).eval()


def save_tiny_causal_lm(folder: Path, seed: int = 0) -> str:
    """A seeded random 2-layer Llama (GQA, width 32) with a byte-level BPE tokenizer trained on CORPUS.

    Like SmolLM2's, the tokenizer adds no special tokens, has bos ``<|im_start|>`` and eos ``<|im_end|>``
    and no pad token; the folder loads with ``AutoModelForCausalLM`` / ``AutoTokenizer``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token=specials[0], bos_token=specials[1], eos_token=specials[2]
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
        initializer_range=0.3,  # large random weights: varied greedy outputs, so decoding tests can fail
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(str(folder))
    return str(folder)


def tiny_causal_autoencoder(bert: str, lm: str, seed: int, conditioning: str = "kv") -> SegmentAutoencoder:
    """A frozen-BERT autoencoder whose decoder is the tiny causal LM in folder ``lm``."""
    config = AutoencoderConfig(
        encoder=bert,
        freeze_encoder=True,
        decoder_name_or_path=lm,
        latent_conditioning=conditioning,
        num_latents=LATENTS,
        latent_dim=WIDTH,
        compressor_layers=1,
        compressor_heads=4,
        reconstructor_layers=1,
        dropout=0.0,
        max_segment_tokens=16,
    )
    torch.manual_seed(seed)
    return SegmentAutoencoder.from_config(config).eval()


_LLAMA_GGUF_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _llama_cpp_permute(weight, n_head: int):
    """The row order llama.cpp stores q/k projections in (transformers reverses it on load)."""
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_tiny_gguf(hf_folder: str, path: Path) -> Path:
    """Write the tiny Llama of ``save_tiny_causal_lm`` (float32 weights, its BPE tokenizer) as a GGUF file.

    Uses the ``gguf`` package's writer with llama.cpp's tensor names and q/k row order, the layout of
    SmolLM2's file, so that ``from_pretrained(folder, gguf_file=...)`` reads it back.
    """
    import json

    import gguf
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = AutoModelForCausalLM.from_pretrained(hf_folder)
    tokenizer = AutoTokenizer.from_pretrained(hf_folder)
    cfg = lm.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_vocab_size(cfg.vocab_size)
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    tokens = [token for token, _ in sorted(state["model"]["vocab"].items(), key=lambda item: item[1])]
    specials = set(tokenizer.all_special_tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]])
    writer.add_token_types([3 if t in specials else 1 for t in tokens])
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_unk_token_id(tokenizer.unk_token_id)
    for key, value in lm.state_dict().items():
        weight = value.numpy().astype(np.float32)
        if key == "lm_head.weight":  # tied to the embeddings
            continue
        if key == "model.embed_tokens.weight":
            name = "token_embd.weight"
        elif key == "model.norm.weight":
            name = "output_norm.weight"
        else:
            parts = key.split(".")
            sub = ".".join(parts[3:-1])
            name = f"blk.{parts[2]}.{_LLAMA_GGUF_NAMES[sub]}.weight"
            if sub == "self_attn.q_proj":
                weight = _llama_cpp_permute(weight, cfg.num_attention_heads)
            elif sub == "self_attn.k_proj":
                weight = _llama_cpp_permute(weight, cfg.num_key_value_heads)
        writer.add_tensor(name, weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_pipeline(bert: str, autoencoder: SegmentAutoencoder, max_segments: int = 2) -> SLDPipeline:
    """A seeded SLDPipeline over ``autoencoder`` with the BERT folder as context encoder (ddim, 4 steps)."""
    torch.manual_seed(0)
    denoiser = SegmentDiT(
        latent_dim=WIDTH,
        num_latents=LATENTS,
        max_segments=max_segments,
        context_dim=24,
        width=32,
        depth=2,
        heads=4,
    )
    randomize_zero_init(denoiser)
    context = ContextEncoder.from_pretrained(bert, max_length=16)
    config = PipelineConfig(scheduler="ddim", num_inference_steps=4, guidance_scale=2.0)
    return SLDPipeline(denoiser, autoencoder, context, config)


def tiny_baseline(bert: str) -> BaselineModel:
    """A seeded AR baseline: the BERT folder as encoder, a from-config T5 decoder trained on CORPUS."""
    config = BaselineConfig(
        encoder=bert,
        decoder_config=dict(TINY_T5),
        decoder_vocab_size=300,
        max_source_tokens=16,
        max_target_tokens=16,
    )
    torch.manual_seed(0)
    return BaselineModel.from_config(config, CORPUS).eval()


def tiny_prefix_lm(folder: Path) -> BaselineModel:
    """A seeded prefix-LM AR baseline over ``save_tiny_causal_lm(folder)`` (GQA; greedy texts differ
    per source)."""
    config = BaselineConfig(
        encoder="decoder",
        decoder_name_or_path=save_tiny_causal_lm(folder),
        max_source_tokens=16,
        max_target_tokens=24,
    )
    torch.manual_seed(0)
    return BaselineModel.from_config(config).eval()


def segmented_synthetic_stories(root: Path, **corpus: int) -> tuple[dict, Path]:
    """A synthetic corpus in ``root/data`` (``write_synthetic_corpus`` with ``corpus``) and its titled
    stories segmented into ``root/segmented`` (title -> story, at most 3 sentences).

    Returns the corpus files and the segmented folder.
    """
    from sld.data.synthetic import write_synthetic_corpus
    from stages import segment

    files = write_synthetic_corpus(root / "data", **corpus)
    seg = root / "segmented"
    argv = [f"splits.train={files['stories_train']}", f"splits.valid={files['stories_valid']}"]
    argv += [f"output_dir={seg}", "records.task=title_to_story", "segmenter.max_segments=3"]
    assert segment.main(argv) == 0
    return files, seg


def write_stage_inputs(root: Path, bert_dropout: bool = True) -> dict:
    """What the three trainers need, for the subprocess tests: a tiny BERT, 40 + 4 synthetic titled
    stories segmented (at most 3 sentences) and a saved tiny autoencoder.

    ``bert_dropout=False`` turns the BERT's dropout off (it differs between processes).
    Returns ``{"bert", "segmented", "autoencoder"}``.
    """
    import json

    bert = save_tiny_bert(root / "bert")
    if not bert_dropout:
        config_file = root / "bert" / "config.json"
        config = json.loads(config_file.read_text())
        config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        config_file.write_text(json.dumps(config))
    _, seg = segmented_synthetic_stories(
        root,
        seed=3,
        stories_train=40,
        stories_valid=4,
        dialogues_train=2,
        dialogues_valid=2,
        pairs_train=4,
        pairs_valid=2,
    )
    autoencoder = root / "autoencoder"
    tiny_autoencoder(bert, seed=0).save_pretrained(autoencoder)
    return {"bert": bert, "segmented": seg, "autoencoder": autoencoder}


def baseline_loss_and_grads(
    model: BaselineModel, batch: dict, from_logits: bool
) -> tuple[torch.Tensor, list]:
    """A baseline's loss on ``batch`` and its parameters' gradients: from its full logits
    (``conversion_loss``) or from ``return_loss=True`` (target positions only)."""
    model.zero_grad()
    args = (batch["input_ids"], batch["attention_mask"], batch["labels"])
    if from_logits:
        loss = conversion_loss(model(*args), batch["labels"])
    else:  # the collator's host-built target positions, as in training
        assert "target_index" in batch
        loss = model(*args, return_loss=True, target_index=batch["target_index"])
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def record_padding_mask_reads(monkeypatch) -> list[tuple[int, ...]]:
    """A list that fills with the shape of every padding mask transformers' bidirectional mask code
    reads on the host (``padding_mask.all()``: a device sync on a GPU) while ``monkeypatch`` is active."""
    import transformers.masking_utils as masking_utils

    reads: list[tuple[int, ...]] = []
    original = masking_utils._ignore_bidirectional_mask_sdpa

    def recording(padding_mask, *args, **kwargs):
        if padding_mask is not None:
            reads.append(tuple(padding_mask.shape))
        return original(padding_mask, *args, **kwargs)

    monkeypatch.setattr(masking_utils, "_ignore_bidirectional_mask_sdpa", recording)
    return reads
