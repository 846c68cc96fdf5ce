"""Real VLM families through the real loading path (``VLMPolicy(config, base_dir=folder)``): a Qwen2.5-VL folder
laid out like a download (its own chat template wins), SmolVLM (Idefics3 architecture, transformers' own
processor) built from configs — rollout, scoring, GRPO steps — and the policy's export formats."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from genrl.config.load import load_recipe
from genrl.explorers.vlm import VLMPlan
from genrl.models.vlm import (
    CHAT_TEMPLATE,
    SmolVLM,
    TinyVLMConfig,
    build_tiny_qwen25vl,
    build_tiny_smolvlm,
    load_processor,
)
from genrl.policies.vlm import VLMLoraOptions, VLMPolicy
from genrl.prompts.visual_arithmetic import VisualArithmeticPrompts
from genrl.recipe import TrainRecipe
from genrl.registry import REWARDS
from genrl.rewards.base import RewardConfig
from tests.helpers import ROOT

SMOKE_VLM = ROOT / "recipes" / "smoke" / "vlm_grpo_tiny.yaml"
TINY = TinyVLMConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
                     vision_hidden_size=32, vision_depth=1, vision_heads=1, vocab_size=300)

if "test_families_length" not in REWARDS:

    @REWARDS.register("test_families_length")
    class ResponseLength:
        """Response length in characters: differs within every group of a random model's samples."""

        @dataclass
        class Config(RewardConfig):
            pass

        def __init__(self, config, **_):
            self.config = config
            self.__name__ = "test_families_length"

        def __call__(self, responses, questions):
            return torch.tensor([float(len(r)) for r in responses])


def _questions(n: int, step: int = 0):
    src = VisualArithmeticPrompts(VisualArithmeticPrompts.Config(size=64), seed=0)
    return src.items(src.sample(step, n))


def _corpus() -> list[str]:
    items = _questions(16)
    return [items[0].system_prompt, "system\nuser\nassistant\n", *(it.question for it in items)]


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qwen25vl")
    build_tiny_qwen25vl(out, TINY, _corpus())
    return out


@pytest.fixture(scope="module")
def smol_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smolvlm")
    build_tiny_smolvlm(out, TINY, _corpus())
    return out


def _policy(folder: Path, **options) -> VLMPolicy:
    config = dict(base_checkpoint=str(folder), max_prompt_tokens=160, max_new_tokens=8, forward_chunk=4)
    return VLMPolicy(VLMPolicy.Config(**{**config, **options}), base_dir=folder)


def _sequences(policy: VLMPolicy, items, response: torch.Tensor) -> dict[str, torch.Tensor]:
    """Prompts + a given response, laid out as a rollout stores them."""
    enc = policy.encode_prompts(items, [it.image for it in items], system=items[0].system_prompt)
    return {"input_ids": torch.cat([enc["prompt_ids"], response], 1),
            "attention_mask": torch.cat([enc["prompt_mask"], torch.ones_like(response)], 1),
            **{k: enc[k] for k in policy.family.image_keys}}


def _logits(model, policy: VLMPolicy, seq: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**policy._model_inputs(seq, list(range(len(seq["input_ids"]))))).logits


# ----------------------------------------------------------------------------- 1. Qwen2.5-VL download layout
MARKED_TEMPLATE = CHAT_TEMPLATE.replace(
    "<|im_start|>{{ m['role'] }}\n", "<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'system' %}[folder template] {% endif %}")


@pytest.mark.parametrize("template_file", ["chat_template.json", "chat_template.jinja"])
def test_a_qwen25vl_download_folder_loads_with_its_own_chat_template(tmp_path, qwen_dir, template_file):
    """A folder as Qwen2.5-VL downloads come (no processor_config.json, processor_class in preprocessor_config.json,
    the stock template in tokenizer_config.json, the processor's template in chat_template.json or .jinja): the
    policy's prompts use the folder's processor template, not a hard-coded one nor the tokenizer's."""
    import shutil

    folder = tmp_path / "Qwen2.5-VL-tiny"
    shutil.copytree(qwen_dir, folder)
    for name in ("chat_template.jinja", "processor_config.json", "video_preprocessor_config.json"):
        (folder / name).unlink()
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps({**pre, "processor_class": "Qwen2_5_VLProcessor"}))
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**tok, "chat_template": CHAT_TEMPLATE}))
    if template_file == "chat_template.json":
        (folder / template_file).write_text(json.dumps({"chat_template": MARKED_TEMPLATE}))
    else:
        (folder / template_file).write_text(MARKED_TEMPLATE)
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]

    policy = _policy(folder)
    assert type(policy.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(policy.processor).__name__ == "Qwen2_5_VLProcessor"
    assert policy.processor.chat_template == MARKED_TEMPLATE
    items = _questions(2)
    enc = policy.encode_prompts(items, [it.image for it in items], system=items[0].system_prompt)
    text = policy.tokenizer.decode(enc["prompt_ids"][0][enc["prompt_mask"][0].bool()])
    assert text.startswith(f"<|im_start|>system\n[folder template] {items[0].system_prompt}<|im_end|>\n"
                           "<|im_start|>user\n<|vision_start|><|image_pad|>")
    assert text.endswith(f"{items[0].question}<|im_end|>\n<|im_start|>assistant\n")
    stock = _policy(qwen_dir).encode_prompts(items, [it.image for it in items], system=items[0].system_prompt)
    assert "[folder template]" not in _policy(qwen_dir).tokenizer.decode(stock["prompt_ids"][0])
    assert torch.equal(enc["pixel_values"], stock["pixel_values"])  # the same image processor either way


def test_an_unsupported_model_family_is_refused_before_its_weights_load(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"]}))
    with pytest.raises(ValueError, match=r"model_type 'llava' is not a supported vision-language family; supported: "
                                         r"qwen2_5_vl \(Qwen2.5-VL\), idefics3/smolvlm \(SmolVLM"):
        _policy(tmp_path)


# ----------------------------------------------------------------------------- 2. SmolVLM
def test_smolvlm_prompts_images_and_an_on_policy_rollout(smol_dir):
    """SmolVLM through the policy: its own chat format, the processor's expanded image tokens, [B, squares, 3, S, S]
    pixels; a rollout never samples vision tokens and its re-score gives ratio exactly 1 before any update."""
    policy = _policy(smol_dir)
    assert type(policy.model).__name__ == "Idefics3ForConditionalGeneration"
    assert type(policy.processor).__name__ == "Idefics3Processor"
    assert isinstance(policy.family, SmolVLM) and policy.family.image_seq_len == 4  # (56/14)^2 / 2^2
    items = _questions(4)
    enc = policy.encode_prompts(items, [it.image for it in items], system=items[0].system_prompt)
    assert enc["pixel_values"].shape == (4, 1, 3, 56, 56) and enc["pixel_attention_mask"].shape == (4, 1, 56, 56)
    text = policy.tokenizer.decode(enc["prompt_ids"][0][enc["prompt_mask"][0].bool()])
    assert text == (f"<|im_start|>System: {items[0].system_prompt}<end_of_utterance>\nUser:<fake_token_around_image>"
                    f"<global-img>{'<image>' * 4}<fake_token_around_image>{items[0].question}<end_of_utterance>\n"
                    "Assistant:")
    # the image processor alone (the noisy / raw branch) gives the same pixels as the full processor
    assert torch.equal(policy.encode_pixels(items, [it.image for it in items]), enc["pixel_values"])
    vocab = policy.tokenizer.get_vocab()
    assert {vocab[t] for t in ("<image>", "<fake_token_around_image>", "<global-img>", "<row_1_col_1>")} <= set(
        policy.vision_token_ids)

    rows = [it for it in items for _ in range(4)]
    n = len(rows)
    rollout = policy.rollout(torch.tensor([it.index for it in rows]), torch.arange(n), step=0, seed=0,
                             plan=VLMPlan(temperature=1.0, top_p=1.0), explorer_config=None, items=rows,
                             group_ids=torch.arange(n) // 4)
    mask = rollout["response_mask"]
    assert mask.sum() > n  # real responses, not just an eos each
    assert not torch.isin(rollout["input_ids"][:, -8:], torch.tensor(policy.vision_token_ids)).any()
    new = policy.score(rollout)["log_probs"] * mask
    assert torch.equal(new, rollout["old_log_probs"])  # ratio exactly 1 on every token
    assert torch.equal(torch.exp(new - rollout["old_log_probs"])[mask.bool()], torch.ones(int(mask.sum())))


def test_smolvlm_scores_exactly_what_generate_sampled(smol_dir):
    """The teacher-forced log-probs of a sampled response equal those ``generate`` sampled it from (prompts of
    different lengths, left-padded): the policy's rows give the model what generate gave it."""
    policy = _policy(smol_dir)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a peakier model than the random init
        for p in policy.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    items = _questions(4)
    enc = policy.encode_prompts(items, [it.image for it in items], system=items[0].system_prompt)
    prompt = {"input_ids": enc["prompt_ids"], "attention_mask": enc["prompt_mask"],
              **{k: enc[k] for k in policy.family.image_keys}}
    assert len(set(enc["prompt_mask"].sum(1).tolist())) > 1  # prompts of different lengths: real left padding
    torch.manual_seed(0)
    out = policy.model.generate(**policy._model_inputs(prompt, [0, 1, 2, 3]), do_sample=True, max_new_tokens=8,
                                min_new_tokens=8, top_k=None, output_logits=True, return_dict_in_generate=True,
                                suppress_tokens=policy.vision_token_ids)
    response = out.sequences[:, enc["prompt_ids"].shape[1]:]
    sampled = torch.stack([F.log_softmax(x.float(), -1) for x in out.logits], 1)
    sampled = sampled.gather(-1, response.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        scored = policy.token_stats(policy.model, _sequences(policy, items, response))["log_probs"]
    assert torch.allclose(scored, sampled, atol=1e-5), (scored - sampled).abs().max()


def test_smolvlm_images_cut_into_different_numbers_of_squares_line_up(tmp_path):
    """With image splitting, a 56 x 168 canvas becomes 3 squares and a 56 x 56 one 5; padded to
    policy.max_image_patches, each row's log-probs are those it gets alone, and an image cut into more squares
    than the cap is refused by name."""
    build_tiny_smolvlm(tmp_path, TINY, _corpus(), image_splitting=True)
    items = _questions(2)
    small = dataclasses.replace(items[1], image=items[1].image[:, :56])
    policy = _policy(tmp_path, max_prompt_tokens=224, forward_chunk=2, max_image_patches=6)

    def log_probs(rows):
        seq = _sequences(policy, rows, torch.full((len(rows), 8), policy.eos_id))
        assert seq["pixel_values"].shape[1] == 6
        with torch.no_grad():
            return policy.token_stats(policy.model, seq)["log_probs"], policy.family.image_tokens(seq).tolist()

    both, tokens = log_probs([items[0], small])
    assert tokens == [3 * 4, 5 * 4]
    assert torch.allclose(both[0], log_probs([items[0]])[0][0], atol=1e-5)
    assert torch.allclose(both[1], log_probs([small])[0][0], atol=1e-5)
    tight = _policy(tmp_path, max_prompt_tokens=224, max_image_patches=4)
    with pytest.raises(ValueError, match=rf"question {small.index}: its image is cut into 5 squares, above "
                                         r"policy.max_image_patches=4"):
        tight.encode_prompts([small], [small.image], system=items[0].system_prompt)


def test_smolvlm_trains_with_grpo_through_the_shared_trainer(tmp_path, smol_dir):
    """Two VOGUE/GRPO steps of the smoke recipe on the SmolVLM folder: the first update is on-policy (ratio 1,
    no clipping), the noisy-image branch and D_t work with SmolVLM's pixels, and the weights move."""
    from genrl.trainer.loop import Trainer

    recipe, _ = load_recipe(SMOKE_VLM, TrainRecipe, [f"policy.base_checkpoint={smol_dir}", "policy.base_recipe=null",
                                                     "rewards=[{name: test_families_length}]", "trainer.steps=2",
                                                     "policy.max_prompt_tokens=160"])
    trainer = Trainer(recipe, recipe_file=str(SMOKE_VLM), run_dir=str(tmp_path / "run"))
    before = {k: v.detach().clone() for k, v in trainer.policy.trainable_parameters().items()}
    assert not any("vision_model" in k or "connector" in k for k in before)  # the vision tower stays frozen
    trainer.train()
    first, second = trainer.history
    assert first["ratio/mean"] == 1.0 and first["clip_frac"] == 0.0 and first["approx_kl"] == 0.0
    assert first["grad_norm"] > 0 and first["vogue/uncertainty"] > 0
    assert math.isfinite(second["policy_loss"])
    after = trainer.policy.trainable_parameters()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def _as_smolvlm2(idefics3_dir: Path, out: Path) -> Path:
    """The tiny SmolVLM folder re-laid as a SmolVLM2 download: ``SmolVLMForConditionalGeneration`` (same sizes,
    fresh weights), ``processor_class: SmolVLMProcessor``, its image processor in ``preprocessor_config.json``."""
    import shutil

    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    config = json.loads((idefics3_dir / "config.json").read_text())
    config = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "transformers_version", "dtype")}
    config["vision_config"] = {**config["vision_config"], "model_type": "smolvlm_vision"}
    SmolVLMForConditionalGeneration(SmolVLMConfig(**config)).save_pretrained(str(out))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        shutil.copy2(idefics3_dir / name, out / name)
    processor = json.loads((idefics3_dir / "processor_config.json").read_text())
    image = {**processor["image_processor"], "image_processor_type": "SmolVLMImageProcessor"}
    (out / "preprocessor_config.json").write_text(json.dumps(image))
    (out / "processor_config.json").write_text(json.dumps({"image_seq_len": processor["image_seq_len"],
                                                           "processor_class": "SmolVLMProcessor"}))
    return out


def test_a_smolvlm2_folder_takes_the_same_path(tmp_path, smol_dir, monkeypatch):
    """SmolVLMForConditionalGeneration with transformers' SmolVLMProcessor (image-only without torchvision, its
    image_seq_len read from processor_config.json): same prompts as SmolVLM-Instruct, ratio exactly 1, and a
    merged export that reloads with the same processor settings and logits."""
    import transformers.models.smolvlm.processing_smolvlm as smolvlm_processing
    from transformers import AutoModelForImageTextToText

    monkeypatch.setattr(smolvlm_processing, "num2words", str)  # required by the class; only video prompts use it
    folder = _as_smolvlm2(smol_dir, tmp_path / "smolvlm2")
    policy = _policy(folder)
    assert type(policy.model).__name__ == "SmolVLMForConditionalGeneration"
    assert type(policy.processor).__name__ == "SmolVLMProcessor" and policy.processor.image_seq_len == 4
    items = _questions(4)
    enc = policy.encode_prompts(items, [it.image for it in items], system=items[0].system_prompt)
    same = _policy(smol_dir).encode_prompts(items, [it.image for it in items], system=items[0].system_prompt)
    assert all(torch.equal(enc[k], same[k]) for k in same)
    rows = [it for it in items for _ in range(2)]
    rollout = policy.rollout(torch.tensor([it.index for it in rows]), torch.arange(8), step=0, seed=0,
                             plan=VLMPlan(temperature=1.0, top_p=1.0), explorer_config=None, items=rows,
                             group_ids=torch.arange(8) // 2)
    assert torch.equal(policy.score(rollout)["log_probs"] * rollout["response_mask"], rollout["old_log_probs"])
    out = policy.export("merged", tmp_path / "merged")
    reloaded = load_processor(out)
    assert type(reloaded).__name__ == "SmolVLMProcessor" and reloaded.image_seq_len == 4
    assert reloaded.chat_template == policy.processor.chat_template
    seq = _sequences(policy, items, torch.full((4, 8), policy.eos_id))
    assert torch.allclose(_logits(AutoModelForImageTextToText.from_pretrained(str(out)), policy, seq),
                          _logits(policy.model, policy, seq), atol=1e-4)


# ----------------------------------------------------------------------------- 3. export
def _perturbed_lora_policy(folder: Path) -> VLMPolicy:
    policy = _policy(folder, lora=VLMLoraOptions(rank=4))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:  # zero at init: make the adapters change the model
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return policy


@pytest.mark.parametrize("family", ["qwen", "smolvlm"])
def test_lora_exports_load_with_transformers_and_peft_and_give_the_policys_logits(tmp_path, request, family):
    from peft import PeftModel
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    folder = request.getfixturevalue("qwen_dir" if family == "qwen" else "smol_dir")
    policy = _perturbed_lora_policy(folder)
    names = list(policy.trainable_parameters())
    assert names and all("lora_" in n and policy.family.language_module in n for n in names)
    items = _questions(2)
    seq = _sequences(policy, items, torch.randint(10, 200, (2, 8), generator=torch.Generator().manual_seed(1)))
    want = _logits(policy.model, policy, seq)
    with policy.model.disable_adapter():
        assert (want - _logits(policy.model, policy, seq)).abs().max() > 0.05  # the adapters matter

    merged = policy.export("merged", tmp_path / "merged")
    assert (merged / "config.json").is_file() and (merged / "model.safetensors").is_file()
    assert not list(merged.glob("adapter_*"))
    model = AutoModelForImageTextToText.from_pretrained(str(merged))
    assert type(model).__name__ == type(policy.model.get_base_model()).__name__
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert torch.allclose(_logits(model, policy, seq), want, atol=1e-4)
    assert torch.equal(_logits(policy.model, policy, seq), want)  # exporting left the policy's adapters alone

    peft_dir = policy.export("peft", tmp_path / "peft")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in peft_dir.iterdir()}
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(folder.resolve())
    base = AutoModelForImageTextToText.from_pretrained(str(folder))
    assert torch.allclose(_logits(PeftModel.from_pretrained(base, str(peft_dir)), policy, seq), want, atol=1e-4)
    direct = AutoModelForImageTextToText.from_pretrained(str(peft_dir))  # transformers loads the adapter itself
    assert torch.allclose(_logits(direct, policy, seq), want, atol=1e-4)

    # Both folders carry the processor, tokenizer and chat template: the same prompt tensors come back.
    text = policy.processor.apply_chat_template(policy._messages(items[0], "Be brief."), add_generation_prompt=True)
    image = Image.fromarray(items[0].image).convert("RGB")
    for out in (merged, peft_dir):
        processor = load_processor(out)
        assert type(processor).__name__ == type(policy.processor).__name__
        assert processor.chat_template == policy.processor.chat_template
        assert processor.tokenizer.padding_side == "right"  # the folder's, not the policy's left padding
        a = processor(text=[text], images=[image], return_tensors="pt")
        b = policy.processor(text=[text], images=[image], return_tensors="pt")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if family == "smolvlm":  # no video half to leave out: transformers' own AutoProcessor reads the export
        from transformers import AutoProcessor

        assert type(AutoProcessor.from_pretrained(str(merged))).__name__ == "Idefics3Processor"


def test_full_finetune_exports_merged_only_and_unknown_formats_are_refused(tmp_path, smol_dir):
    from transformers import AutoModelForImageTextToText

    policy = _policy(smol_dir)
    with torch.no_grad():
        next(p for n, p in policy.model.named_parameters() if "text_model.layers.0.mlp" in n).mul_(3.0)
    items = _questions(2)
    seq = _sequences(policy, items, torch.full((2, 8), policy.eos_id))
    out = policy.export("merged", tmp_path / "merged")
    assert torch.allclose(_logits(AutoModelForImageTextToText.from_pretrained(str(out)), policy, seq),
                          _logits(policy.model, policy, seq), atol=1e-4)
    with pytest.raises(ValueError, match=r"export format 'peft': this policy is fully fine-tuned .* use --format merged"):
        policy.export("peft", tmp_path / "peft")
    with pytest.raises(ValueError, match=r"export format 'diffusers-lora' is not one the vlm policy writes; "
                                         r"supported: merged, peft"):
        policy.export("diffusers-lora", tmp_path / "x")
    assert not (tmp_path / "peft").exists() and not (tmp_path / "x").exists()  # refused before writing anything

    merged_at_load = _perturbed_lora_policy(smol_dir)  # as from_checkpoint(merge=True) leaves it
    merged_at_load.model = merged_at_load.engine_model = merged_at_load.model.merge_and_unload()
    with pytest.raises(ValueError, match=r"export format 'peft': the adapters were merged .* use --format merged"):
        merged_at_load.export("peft", tmp_path / "peft")
    assert (merged_at_load.export("merged", tmp_path / "m2") / "model.safetensors").is_file()
