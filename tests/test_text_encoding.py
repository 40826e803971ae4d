"""Text conditioning at prepare: with the backbone's own text encoder (``text_encoder/``, ``tokenizer/``: T5 on
CogVideoX, UMT5 on Wan) the null prompt is its encoding of "" and each caption its encoding, exactly as the family's
diffusers pipelines encode prompts; embeddings are cached once; the cache key follows the encoder; without an
encoder the null prompt stays zeros."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from directanimator.errors import InputError
from directanimator.models.family import spec_from_config
from directanimator.text import (backbone_null_prompt, encode_prompts, find_text_encoder, load_text_encoder,
                                 text_encoder_fingerprint)
from tests.tiny import TEXT_DIM, TEXT_LEN, WAN_TEXT_LEN, tiny_backbone, tiny_backbone_config
from tests.training_world import CONFIG, make_world, micro_vae, overrides
from training import text_encoding
from training.config import load_config
from training.data import NULL_TEXT, CachedClips, cache_folder, cache_key, clip_id
from training.prepare import prepare, read_backbone_config
from training.text_encoding import PRETRAINED_TEXT_DIM, caption_file, prepare_text
from training.world.dataset import read_metadata

PIECES = ["▁a", "▁person", "▁dances", "▁in", "▁the", "▁rain", "▁red", "▁dress", "▁walks", "▁slowly", "▁"]
LONG = "a person in a red dress walks slowly in the rain and dances in the rain"  # over TEXT_LEN tokens


COGVIDEOX = tiny_backbone_config("1.0")  # text: TEXT_LEN tokens of TEXT_DIM
WAN = tiny_backbone_config("wan-i2v")  # text: WAN_TEXT_LEN (512) tokens of TEXT_DIM


def tiny_t5(folder: Path, *, seed: int = 0, width: int = TEXT_DIM, extra_piece: str | None = None,
            umt5: bool = False) -> Path:
    """Save a tiny T5 text encoder (UMT5 with `umt5`, as Wan's) and its tokenizer as a CogVideoX (Wan) diffusers repo
    has them: `folder`/text_encoder, /tokenizer."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer, UMT5Config, UMT5EncoderModel

    pieces = PIECES + list("abcdefghijklmnopqrstuvwxyz") + ([extra_piece] if extra_piece else [])
    vocab = [(p, -float(k)) for k, p in enumerate(["<pad>", "</s>", "<unk>", *pieces])]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    torch.manual_seed(seed)
    config_class, model_class = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    config = config_class(vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                          relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", dropout_rate=0.0)
    model_class(config).eval().save_pretrained(folder / "text_encoder")
    tokenizer.save_pretrained(folder / "tokenizer")
    return folder


def pipeline_encoding(folder: Path, prompt: str) -> torch.Tensor:
    """``[L, D]``: what diffusers' CogVideoX image-to-video pipeline, loaded with `folder`'s T5, feeds the
    transformer for `prompt` (the backbone's max_text_seq_length tokens)."""
    from diffusers import CogVideoXImageToVideoPipeline
    from transformers import AutoTokenizer, T5EncoderModel

    pipe = CogVideoXImageToVideoPipeline(tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer"),
                                         text_encoder=T5EncoderModel.from_pretrained(folder / "text_encoder"),
                                         vae=None, transformer=None, scheduler=None)
    with torch.no_grad():  # as the pipeline's __call__ runs it (grad mode changes the last float bits)
        embeds, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False, max_sequence_length=TEXT_LEN,
                                       device=torch.device("cpu"))
    return embeds[0].float()


def wan_pipeline_encoding(folder: Path, prompt: str, *, pipeline: str = "WanPipeline") -> torch.Tensor:
    """``[512, D]``: what diffusers' Wan text-to-video (or image-to-video) pipeline, loaded with `folder`'s UMT5,
    feeds the transformer for `prompt`. (diffusers 0.42.1's WanImageToVideoPipeline calls ftfy without checking
    that it is installed; both encode prompts with the same steps.)"""
    import diffusers
    from transformers import AutoTokenizer, UMT5EncoderModel

    pipe = getattr(diffusers, pipeline)(tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer"),
                                        text_encoder=UMT5EncoderModel.from_pretrained(folder / "text_encoder"),
                                        vae=None, scheduler=None)
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False, max_sequence_length=WAN_TEXT_LEN,
                                       device=torch.device("cpu"))
    return embeds[0].float()


def text_config(backbone: Path, *extra: str):
    """A training config whose model.backbone is `backbone` (no data: prepare_text is called directly)."""
    return load_config(CONFIG, [f"model.backbone={json.dumps(str(backbone))}", *extra], check_paths=False)


class EncoderCalls:
    """Wraps `training.text_encoding.encode_prompts` and records every prompt it encodes."""

    def __init__(self, monkeypatch):
        self.prompts: list[str] = []
        real = text_encoding.encode_prompts

        def counted(tokenizer, encoder, prompts, **kwargs):
            self.prompts += list(prompts)
            return real(tokenizer, encoder, prompts, **kwargs)

        monkeypatch.setattr(text_encoding, "encode_prompts", counted)


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    """The tiny world with captions (one long, one shared by two clips, one beside a text_embeds file) prepared
    from a backbone folder that holds a tiny T5."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("text")
    data, model = make_world(root)
    tiny_t5(model)
    entries = read_metadata(data)
    given = torch.randn(1, TEXT_LEN, TEXT_DIM)
    save_file({"text_embeds": given}, str(data / "given.safetensors"))
    captions = ["a person dances", "a person dances", LONG]
    entries = [dict(e, caption=c) for e, c in zip(entries, captions)] + [
        dict(entries[3], caption="ignored beside a file", text_embeds="given.safetensors")]
    (data / "metadata.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    config = load_config(CONFIG, overrides(root, data, model, "data.pseudo=false"))
    result = prepare(config)
    yield config, entries, given, result
    torch.set_num_threads(threads)


@pytest.mark.slow  # the module fixture prepares four clips
def test_null_prompt_is_the_backbone_t5_encoding_of_the_empty_string(captioned):
    config, _, _, result = captioned
    assert result["done"] == 4
    null = load_file(str(cache_folder(config) / NULL_TEXT))["null_text"]
    expected = pipeline_encoding(Path(config.model.backbone), "")
    assert null.shape == (1, TEXT_LEN, TEXT_DIM) and null.abs().max() > 0
    assert torch.equal(null[0], expected)
    assert torch.equal(CachedClips(config).null_text, null)  # what training feeds and exports as the null prompt


@pytest.mark.slow
def test_each_caption_is_cached_as_its_t5_encoding_and_a_text_embeds_file_wins(captioned):
    config, entries, given, _ = captioned
    folder, backbone = cache_folder(config), Path(config.model.backbone)
    cached = [load_file(str(folder / f"{clip_id(e)}.safetensors"))["text_embeds"] for e in entries]
    for entry, text in zip(entries[:3], cached):  # encoded in one batch, so equal up to float rounding
        torch.testing.assert_close(text, pipeline_encoding(backbone, entry["caption"]), rtol=0, atol=1e-5)
    assert not torch.equal(cached[0], cached[2])  # the long caption, truncated as the pipeline does, differs
    assert torch.equal(cached[3], given[0])
    assert len(list((folder / "text").glob("*.safetensors"))) == 3  # "", the two distinct captions; not the 4th


@pytest.mark.slow
def test_a_resumed_prepare_loads_no_encoder_and_a_new_caption_alone_is_encoded(captioned, monkeypatch):
    config, entries, _, _ = captioned
    calls = EncoderCalls(monkeypatch)
    bc = read_backbone_config(config)
    folder = cache_folder(config)
    prepare_text(config, bc, entries, folder)
    assert calls.prompts == []
    captions = prepare_text(config, bc, [*entries, dict(entries[0], caption="the rain walks")], folder)
    assert calls.prompts == ["the rain walks"]
    torch.testing.assert_close(captions(dict(entries[0], caption="the rain walks")),
                               pipeline_encoding(Path(config.model.backbone), "the rain walks"), rtol=0, atol=1e-5)
    assert captions({"clip": "x.mp4"}) is None and captions(dict(entries[0], caption="  ")) is None


def test_prepare_encodes_distinct_captions_once_in_batches(tmp_path, monkeypatch):
    backbone = tiny_t5(tmp_path / "backbone")
    config = text_config(backbone)
    calls = EncoderCalls(monkeypatch)
    entries = [{"clip": f"{k}.mp4", "caption": f"a person {'walks' if k % 2 else 'dances'}"} for k in range(6)]
    many = [{"clip": f"m{k}.mp4", "caption": "a " * k + "rain"} for k in range(text_encoding.ENCODE_BATCH + 1)]
    captions = prepare_text(config, COGVIDEOX, entries + many, tmp_path / "cache")
    assert sorted(calls.prompts) == sorted({"", "a person walks", "a person dances", *(e["caption"] for e in many)})
    null = load_file(str(tmp_path / "cache" / NULL_TEXT))["null_text"]
    assert torch.equal(null[0], pipeline_encoding(backbone, ""))  # "" alone, as the pipeline encodes it
    batched = captions(many[-1])  # encoded in a second batch, beside other prompts
    torch.testing.assert_close(batched, pipeline_encoding(backbone, many[-1]["caption"]), rtol=0, atol=1e-5)


def test_without_a_text_encoder_the_null_prompt_is_zeros_with_a_warning_for_a_pretrained_width(tmp_path, caplog):
    (tmp_path / "backbone").mkdir()  # a folder without text_encoder/
    config = text_config(tmp_path / "backbone")
    entries = [{"clip": "a.mp4", "caption": "a person dances"}]
    for dim, warned in ((TEXT_DIM, False), (PRETRAINED_TEXT_DIM, True)):
        caplog.clear()
        folder = tmp_path / str(dim)
        with caplog.at_level(logging.WARNING, logger="training.text_encoding"):
            captions = prepare_text(config, dict(COGVIDEOX, max_text_seq_length=4, text_embed_dim=dim), entries,
                                    folder)
        null = load_file(str(folder / NULL_TEXT))["null_text"]
        assert null.shape == (1, 4, dim) and null.abs().max() == 0
        assert ("the null prompt is zeros" in caplog.text) is warned
        assert "1 distinct captions are left out" in caplog.text
        assert captions(entries[0]) is None


def test_an_explicit_null_text_wins_over_the_encoder(tmp_path):
    backbone = tiny_t5(tmp_path / "backbone")
    mine = torch.randn(1, TEXT_LEN, TEXT_DIM)
    save_file({"null_text": mine}, str(tmp_path / "null.safetensors"))
    config = text_config(backbone, f"model.null_text={json.dumps(str(tmp_path / 'null.safetensors'))}")
    prepare_text(config, COGVIDEOX, [], tmp_path / "cache")
    assert torch.equal(load_file(str(tmp_path / "cache" / NULL_TEXT))["null_text"], mine)


def test_model_text_encoder_points_elsewhere_and_the_cache_key_follows_the_encoder_content(tmp_path):
    model = tmp_path / "model"
    tiny_backbone("1.0").save_pretrained(model / "transformer")
    micro_vae().save_pretrained(model / "vae")  # (a backbone without one is keyed by its path)

    def key(backbone: Path, *extra: str) -> str:
        return cache_key(text_config(backbone, *extra))

    bare = key(model)
    tiny_t5(tmp_path / "t5")
    shutil.copytree(model, tmp_path / "with_t5")
    for part in ("text_encoder", "tokenizer"):
        shutil.copytree(tmp_path / "t5" / part, tmp_path / "with_t5" / part)
    own = key(tmp_path / "with_t5")
    assert own != bare  # the encoder makes the null prompt and captions
    assert key(model, f"model.text_encoder={json.dumps(str(tmp_path / 't5'))}") == own  # by content, not path
    tiny_t5(tmp_path / "retrained", seed=1)
    assert key(model, f"model.text_encoder={json.dumps(str(tmp_path / 'retrained'))}") not in (own, bare)
    tiny_t5(tmp_path / "retokenized", extra_piece="▁jumps")
    shutil.copytree(tmp_path / "t5" / "text_encoder", tmp_path / "retokenized" / "text_encoder", dirs_exist_ok=True)
    assert key(model, f"model.text_encoder={json.dumps(str(tmp_path / 'retokenized'))}") != own


def test_a_repo_id_backbone_finds_its_text_encoder_in_the_hugging_face_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--owner--tiny" / "snapshots" / ("0" * 40)
    tiny_t5(snapshot)
    (tmp_path / "hub" / "models--owner--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--owner--tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    found = find_text_encoder("owner/tiny")
    assert found is not None
    assert (found.encoder, found.tokenizer) == (snapshot / "text_encoder", snapshot / "tokenizer")
    assert find_text_encoder("owner/absent") is None
    assert text_encoder_fingerprint("owner/tiny") == text_encoder_fingerprint(snapshot)


def test_a_tokenizer_folder_with_spiece_model_only_loads_or_is_refused_naming_the_fix(tmp_path):
    """CogVideoX repos ship tokenizer/ as a sentencepiece spiece.model; transformers converts it through
    sentencepiece's protobuf schema, which this environment's protobuf may not read."""
    import io

    sentencepiece = pytest.importorskip("sentencepiece")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["a person dances in the rain", "the red dress walks slowly"] * 20), model_writer=model,
        vocab_size=30, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
        minloglevel=2)
    tiny_t5(tmp_path)
    shutil.rmtree(tmp_path / "tokenizer")
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "spiece.model").write_bytes(model.getvalue())
    (tmp_path / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
         "extra_ids": 0}))
    try:
        from sentencepiece import sentencepiece_model_pb2  # noqa: F401  (what the conversion parses the file with)
    except ImportError:
        with pytest.raises(InputError, match="install sentencepiece 0.2.0"):
            load_text_encoder(find_text_encoder(tmp_path))
        return
    tokenizer, _ = load_text_encoder(find_text_encoder(tmp_path))
    pieces = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue()).encode("a person dances")
    assert tokenizer("a person dances", add_special_tokens=True).input_ids == [*pieces, 1]  # then </s>


@pytest.mark.parametrize("case, message", [
    ("missing", "model.text_encoder='.*nowhere': no T5 or UMT5 text encoder there"),
    ("width", "it gives 16-wide embeddings but the backbone takes 32"),
    ("no_tokenizer", "no tokenizer beside it"),
    ("caption", "caption must be a string"),
])
def test_bad_text_inputs_are_refused_before_any_encoding(tmp_path, case, message):
    backbone = tiny_t5(tmp_path / "backbone", width=16 if case == "width" else TEXT_DIM)
    if case == "no_tokenizer":
        shutil.rmtree(backbone / "tokenizer")
    extra = [f"model.text_encoder={json.dumps(str(tmp_path / 'nowhere'))}"] if case == "missing" else []
    config = text_config(backbone, *extra)
    entries = [{"clip": "a.mp4", "caption": 3 if case == "caption" else "a person"}]
    with pytest.raises(InputError, match=message):
        prepare_text(config, COGVIDEOX, entries, tmp_path / "c")
    assert not (tmp_path / "c" / NULL_TEXT).exists() and not caption_file(tmp_path / "c", "a person").exists()


# --------------------------------------------------------------------------- Wan: UMT5 at 512 tokens
WAN_CAPTIONS = ["a person dances", "  the rain &amp;\n red   dress ", LONG * 30]  # spacing, an HTML entity, > 512


def test_wan_null_prompt_and_captions_equal_the_wan_pipelines_umt5_encoding(tmp_path, monkeypatch):
    backbone = tiny_t5(tmp_path / "backbone", umt5=True)
    calls = EncoderCalls(monkeypatch)
    entries = [{"clip": f"{k}.mp4", "caption": c} for k, c in enumerate(WAN_CAPTIONS)]
    captions = prepare_text(text_config(backbone), WAN, entries, tmp_path / "cache")
    assert sorted(calls.prompts) == sorted(["", *WAN_CAPTIONS])
    null = load_file(str(tmp_path / "cache" / NULL_TEXT))["null_text"]
    expected = wan_pipeline_encoding(backbone, "")
    assert null.shape == (1, WAN_TEXT_LEN, TEXT_DIM)
    assert torch.equal(null[0], expected)
    assert null[0, 0].abs().max() > 0 and null[0, 1:].abs().max() == 0  # "" is one token, </s>; zeros after it
    if importlib.util.find_spec("ftfy") is not None:  # the image-to-video pipeline needs it
        assert torch.equal(expected, wan_pipeline_encoding(backbone, "", pipeline="WanImageToVideoPipeline"))
    for entry in entries:  # encoded in one batch, so equal up to float rounding
        torch.testing.assert_close(captions(entry), wan_pipeline_encoding(backbone, entry["caption"]), rtol=0,
                                   atol=1e-5)
    tokens = [int((captions(e).abs().amax(-1) > 0).sum()) for e in entries]
    assert tokens[0] == len("a person dances".split()) + 1 and tokens[2] == WAN_TEXT_LEN  # + </s>; truncated


def test_wan_prompts_are_cleaned_and_masked_as_the_pipeline_does(tmp_path):
    """Without the cleaning ("&amp;", spacing) or the attention mask the encoding differs from the pipeline's; a
    prompt batched beside a longer one encodes as it does alone."""
    from transformers import UMT5EncoderModel

    backbone = tiny_t5(tmp_path, umt5=True)
    tokenizer, encoder = load_text_encoder(find_text_encoder(backbone))
    assert isinstance(encoder, UMT5EncoderModel)
    messy, clean = "  the rain &amp;\n red   dress ", "the rain & red dress"
    ours = encode_prompts(tokenizer, encoder, [messy, LONG], max_length=WAN_TEXT_LEN)
    torch.testing.assert_close(ours[0], encode_prompts(tokenizer, encoder, [clean], max_length=WAN_TEXT_LEN)[0],
                               rtol=0, atol=1e-6)
    assert torch.equal(encode_prompts(tokenizer, encoder, [messy], max_length=WAN_TEXT_LEN)[0],
                       wan_pipeline_encoding(backbone, messy))
    raw = tokenizer([clean], padding="max_length", max_length=WAN_TEXT_LEN, return_tensors="pt")
    own = int(raw.attention_mask.sum())
    with torch.no_grad():  # without the mask the prompt's own tokens attend to the padding too
        unmasked = encoder(input_ids=raw.input_ids)[0][0]
    assert not torch.allclose(unmasked[:own], ours[0, :own], atol=1e-3)
    assert ours[0, :own].abs().amax(-1).min() > 0 and ours[0, own:].abs().max() == 0


def test_backbone_null_prompt_is_the_family_pipelines_encoding_of_the_empty_prompt(tmp_path):
    wan, cogvideox = tiny_t5(tmp_path / "wan", umt5=True), tiny_t5(tmp_path / "cogvideox")
    null = backbone_null_prompt(wan, spec_from_config(WAN))
    assert null.shape == (1, WAN_TEXT_LEN, TEXT_DIM) and null.dtype == torch.float32
    assert torch.equal(null[0], wan_pipeline_encoding(wan, ""))
    null = backbone_null_prompt(cogvideox, spec_from_config(COGVIDEOX))
    assert null.shape == (1, TEXT_LEN, TEXT_DIM) and torch.equal(null[0], pipeline_encoding(cogvideox, ""))
    (tmp_path / "bare").mkdir()
    assert backbone_null_prompt(tmp_path / "bare", spec_from_config(WAN)) is None
    with pytest.raises(InputError, match="a 't5' encoder, but a wan backbone takes 'umt5'"):
        backbone_null_prompt(cogvideox, spec_from_config(WAN))


def test_wan_without_a_text_encoder_has_a_zero_512_token_null_prompt_and_a_umt5_key(tmp_path, caplog):
    (tmp_path / "bare").mkdir()
    with caplog.at_level(logging.WARNING, logger="training.text_encoding"):
        prepare_text(text_config(tmp_path / "bare"), dict(WAN, text_dim=PRETRAINED_TEXT_DIM), [], tmp_path / "c")
    null = load_file(str(tmp_path / "c" / NULL_TEXT))["null_text"]
    assert null.shape == (1, WAN_TEXT_LEN, PRETRAINED_TEXT_DIM) and null.abs().max() == 0
    assert "a pretrained Wan never saw" in caplog.text and "with UMT5" in caplog.text
    umt5 = text_encoder_fingerprint(tiny_t5(tmp_path / "umt5", umt5=True))
    assert umt5 is not None and umt5 != text_encoder_fingerprint(tiny_t5(tmp_path / "t5"))
    assert umt5 != text_encoder_fingerprint(tiny_t5(tmp_path / "umt5_1", umt5=True, seed=1))


@pytest.mark.parametrize("encoder, bc", [("t5", WAN), ("umt5", COGVIDEOX)])
def test_an_encoder_of_the_other_family_is_refused_before_any_encoding(tmp_path, encoder, bc):
    backbone = tiny_t5(tmp_path / "backbone", umt5=encoder == "umt5")
    want = "umt5" if encoder == "t5" else "t5"
    with pytest.raises(InputError, match=f"a '{encoder}' encoder, but a .* backbone takes '{want}'.*model.text_enc"):
        prepare_text(text_config(backbone), bc, [{"clip": "a.mp4", "caption": "a person"}], tmp_path / "c")
    assert not (tmp_path / "c" / NULL_TEXT).exists()
