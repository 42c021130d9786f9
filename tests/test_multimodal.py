"""The multimodal Excitor: images reach the text only through the Excitor prompts, and it is enough."""
from __future__ import annotations

import pytest
import torch

from data.collate import Collator
from mm_excitor import ExcitorConfig, excitor_blocks
from mm_excitor.decoding import Decoding
from mm_excitor.methods.excitor import MultimodalExcitor
from mm_excitor.vision import VisionEncoder
from tests.tiny_models import tiny_model, tiny_tokenizer, tiny_vision_config

PROMPT = "red blue :"
CAPTIONS = ("a red circle", "two blue square")


def lm_with_text_prior():
    """A tiny LM that has learnt "red red : a red circle" and "blue blue : two blue square".

    Given the prompt "red blue :", which caption it continues with depends on how much its attention weighs the
    "red" and the "blue" token: exactly what an Excitor can change and nothing else. A random-init tiny LM has no
    such prior, and attention re-weighting alone cannot make it say anything in particular. The prior is learnt
    well (200 steps): with a weak one, which caption the Excitor can pull out depends on chaotic details (the
    learning rate, the BLAS kernel), with a firm one every setting tried learns the images (see `train`).
    """
    torch.manual_seed(0)
    model, tokenizer = tiny_model(), tiny_tokenizer()
    ids, mask, labels = caption_batch(tokenizer, CAPTIONS, prompts=["red red :", "blue blue :"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(200):
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval(), tokenizer


def build(tmp_path, mode="concat", **vision_overrides):
    language_model, tokenizer = lm_with_text_prior()
    vision = VisionEncoder(tiny_vision_config(tmp_path, **vision_overrides))
    config = ExcitorConfig(num_layers=4, num_prompts=4, rank=8, visual_prompt_mode=mode)
    return MultimodalExcitor(language_model, tokenizer, config, vision)


def generate(model, prompts, images=None, **decoding) -> list[str]:
    """Captions through the one prompt path: the collator's left-padded generation batch."""
    items = [{"prompt": p, "has_image": images is not None, **({"image": images[i]} if images is not None else {})}
             for i, p in enumerate(prompts)]
    batch = Collator(model.tokenizer, 64).prompts(items)
    return model.generate(**batch.inputs, decoding=Decoding(**{"max_new_tokens": 5, **decoding}))


def two_images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 32, 32, generator=generator)


def caption_batch(tokenizer, captions, prompts=None):
    prompts = prompts or [PROMPT] * len(captions)
    enc = tokenizer([f"{p} {c}" for p, c in zip(prompts, captions)], return_tensors="pt", padding=True)
    eos = torch.full((len(captions), 1), tokenizer.eos_token_id)
    ids = torch.cat([enc["input_ids"], eos], 1)
    mask = torch.cat([enc["attention_mask"], torch.ones_like(eos)], 1)
    labels = ids.clone()
    labels[:, : len(tokenizer(prompts[0])["input_ids"])] = -100
    return ids, mask, labels


def train(model, images, steps=150, lr=5e-3):
    """Fit the Excitor to caption each image. Measured on 1 and 2 threads, 4 adapter seeds, concat and add modes and
    learning rates 3e-3 to 1e-2: the loss with swapped images is 2.8 to 5.7 times the matched loss; the tests ask
    for 1.5 times."""
    ids, mask, labels = caption_batch(model.tokenizer, CAPTIONS)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    losses = []
    model.train()
    for _ in range(steps):
        loss = model(ids, mask, labels, images=images).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def matched_and_swapped_loss(model, images):
    ids, mask, labels = caption_batch(model.tokenizer, CAPTIONS)
    with torch.no_grad():
        return model(ids, mask, labels, images=images).loss, model(ids, mask, labels, images=images.flip(0)).loss


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model = build(tmp_path_factory.mktemp("clip"))
    images = two_images()
    losses = train(model, images)
    return model, images, losses


def test_loss_and_captions_follow_the_image(trained):
    model, images, losses = trained
    matched, swapped = matched_and_swapped_loss(model, images)
    assert losses[-1] < 0.8 * losses[0]
    assert swapped > 1.5 * matched
    prompts = [PROMPT, PROMPT]
    captions = generate(model, prompts, images)
    assert captions[0] != captions[1]
    assert generate(model, prompts, images.flip(0)) == captions[::-1]
    # Without images the model cannot tell the two apart.
    assert len(set(generate(model, prompts))) == 1


def test_gradients_reach_projection_and_prompts_only(tmp_path):
    model = build(tmp_path)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".gate"):
                p.fill_(0.1)  # past step one, so that every trainable tensor is on the gradient path
    ids, mask, labels = caption_batch(model.tokenizer, CAPTIONS)
    model(ids, mask, labels, images=two_images()).loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("projection.") for n in trainable)
    assert all(n.startswith("projection.") or ".k_proj." in n for n in trainable)
    for name, parameter in model.named_parameters():
        if name in trainable:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name
    assert not any(p.requires_grad for p in model.vision.parameters())


def test_greedy_captions_do_not_depend_on_batch_size(trained):
    model, _, _ = trained
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    prompts = [PROMPT, "blue red :", "red :", PROMPT, "a photo of", PROMPT, "blue :", PROMPT]
    alone = [generate(model, [p], images[i:i + 1], max_new_tokens=6)[0] for i, p in enumerate(prompts)]
    assert generate(model, prompts, images, max_new_tokens=6) == alone


def test_beam_search_and_text_only_inputs(trained):
    model, images, _ = trained
    beams = generate(model, [PROMPT, PROMPT], images, num_beams=3)
    assert beams[0] != beams[1]
    assert generate(model, [PROMPT, PROMPT], images.flip(0), num_beams=3) == beams[::-1]
    text_only = generate(model, [PROMPT, PROMPT])
    assert len(text_only) == 2
    # A sample flagged as having no image sees the learnable prompts alone, exactly as a text-only call.
    ids, mask, labels = caption_batch(model.tokenizer, CAPTIONS)
    with torch.no_grad():
        masked = model(ids, mask, labels, images=images, has_image=torch.tensor([False, True])).logits
        no_image = model(ids, mask, labels).logits
        with_image = model(ids, mask, labels, images=images).logits
    torch.testing.assert_close(masked[0], no_image[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(masked[1], with_image[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["concat", "add"])
def test_both_visual_prompt_modes_learn_the_images(tmp_path, mode):
    model = build(tmp_path, mode=mode, token_grid=2)
    images = two_images()
    train(model, images)
    matched, swapped = matched_and_swapped_loss(model, images)
    assert swapped > 1.5 * matched


def test_visual_prompts_never_outlive_their_call_and_never_broadcast(trained):
    """No side channel: after a forward or generate, the blocks hold no images, so a later direct call of the
    language model is the text-only model; and one image for two texts is an error, not a silent repeat."""
    model, images, _ = trained
    ids, mask, labels = caption_batch(model.tokenizer, CAPTIONS)
    with torch.no_grad():
        text_only = model.language_model(input_ids=ids, attention_mask=mask).logits
        model(ids, mask, labels, images=images)
        generate(model, [PROMPT, PROMPT], images)
        assert all(block.call_prompts is None for block in excitor_blocks(model.language_model))
        torch.testing.assert_close(model.language_model(input_ids=ids, attention_mask=mask).logits, text_only,
                                   rtol=0, atol=0)
        with pytest.raises(ValueError, match="1 images .* for a batch of 2 texts"):
            model(ids, mask, labels, images=images[:1])
        with pytest.raises(ValueError, match="has_image has shape"):
            model(ids, mask, labels, images=images, has_image=torch.tensor([True]))
        batch = Collator(model.tokenizer, 64).prompts([{"prompt": PROMPT, "has_image": False}] * 2)
        with pytest.raises(ValueError, match="1 images .* for a batch of 2 texts"):
            model.generate(**batch.inputs, images=images[:1])
    assert all(block.call_prompts is None for block in excitor_blocks(model.language_model))  # cleared after errors too


def test_wrong_inputs_give_clear_errors(tmp_path):
    model = build(tmp_path)
    ids, mask, labels = caption_batch(model.tokenizer, CAPTIONS)
    with pytest.raises(ValueError, match="do not match the encoder"):
        model(ids, mask, labels, visual_tokens=torch.zeros(2, 5, 48))
    with pytest.raises(ValueError, match="not both"):
        model(ids, mask, labels, images=two_images(), visual_tokens=torch.zeros(2, 17, 48))
    with pytest.raises(ValueError, match="visual_prompt_mode"):
        MultimodalExcitor(tiny_model(), tiny_tokenizer(), ExcitorConfig(num_layers=2), model.vision)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        VisionEncoder(tiny_vision_config(tmp_path, pretrained=str(tmp_path / "missing.safetensors")))


def test_adapter_covers_projection_and_prompts_and_refuses_another_encoder(tmp_path, trained):
    from mm_excitor import load_adapter, save_adapter
    from mm_excitor.language_model import trainable_state_dict

    model, images, _ = trained
    save_adapter(model, tmp_path / "adapter")
    saved = set(trainable_state_dict(model))
    assert any(k.startswith("projection.") for k in saved) and any(k.endswith(".prompts") for k in saved)
    fresh = build(tmp_path)
    load_adapter(fresh, tmp_path / "adapter")
    prompts = [PROMPT, PROMPT]
    assert generate(fresh, prompts, images) == generate(model, prompts, images)
    other_encoder = build(tmp_path, init_seed=1)
    with pytest.raises(ValueError, match="vision.weights_sha256"):
        load_adapter(other_encoder, tmp_path / "adapter")
    from mm_excitor.methods import METHODS

    class Other(MultimodalExcitor):
        method = "other"

    with pytest.raises(ValueError, match="holds a 'excitor' adapter; this model uses the 'other' method"):
        load_adapter(Other(tiny_model(), tiny_tokenizer(), fresh.excitor_config, fresh.vision), tmp_path / "adapter")
    assert "other" not in METHODS
    other_lm = MultimodalExcitor(tiny_model(seed=5), tiny_tokenizer(), fresh.excitor_config, fresh.vision)
    with pytest.raises(ValueError, match="language_model.weights_fingerprint"):
        load_adapter(other_lm, tmp_path / "adapter")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_checkpoint_written_for_an_open_clip_model_loads_through_pretrained(tmp_path, suffix):
    import open_clip
    from safetensors.torch import save_file

    config = tiny_vision_config(tmp_path)
    open_clip.add_model_config(config.model_config_file)
    torch.manual_seed(123)
    clip = open_clip.create_model(config.model_name)
    path = tmp_path / f"random_clip{suffix}"
    state = {k: v.contiguous() for k, v in clip.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"epoch": 1, "name": "random", "state_dict": state}, path)  # open_clip's trainer layout
    loaded = VisionEncoder(tiny_vision_config(tmp_path, pretrained=str(path)))
    for name, tensor in clip.visual.state_dict().items():
        assert torch.equal(loaded.visual.state_dict()[name], tensor), name
    assert loaded.identity()["weights_sha256"] != VisionEncoder(tiny_vision_config(tmp_path)).identity()["weights_sha256"]
