"""Processors for random-weight presets, built offline (no hub): a WordLevel tokenizer with the
family's special tokens, the family's own image/video processor classes, and a chat template
that lays out one user turn the way the family's model card does.

``write_checkpoint`` saves a preset as a real checkpoint directory with the library's own
``save_pretrained`` (config, weights, processor, tokenizer, chat template): the on-disk format
of the published releases, for tests and for trying ``--checkpoint`` without a download.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers

WORDS = ("user assistant system what is in the video happens a b c d which option answer with letter "
         "of given choices best describe this Frame frame and sampled at seconds . , : ? ( ) < > A B C D").split()
DIGITS = [str(i) for i in range(10)]

_TURN = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
         "{% else %}{% for c in m['content'] %}{% if c['type'] == 'video' %}VIDEO"
         "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

SPECIAL = {
    "qwen3_vl": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"],
    "nemotron_h_omni": ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<image>", "<video>", "<img>",
                        "</img>", "<so_embedding>", "<so_start>", "<so_end>"],
    "llava_onevision": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"],
}
# What the chat template writes for {"type": "video"} (the processor expands it).
VIDEO_MARK = {"qwen3_vl": "<|vision_start|><|video_pad|><|vision_end|>", "nemotron_h_omni": "<video>\n",
              "llava_onevision": "<video>\n"}


def family_key(family: str) -> str:
    return "qwen3_vl" if family.startswith("qwen3_vl") else family


def make_tokenizer(family: str, vocab_size: int | None = None):
    """A WordLevel tokenizer: the family's special tokens first, then a few words and digits,
    padded with filler words up to ``vocab_size`` (so every model id decodes to something).
    Numbers are split into single digits (as Qwen's tokenizer does), so every timestamp the
    processor writes is spelt out in known tokens."""
    from transformers import PreTrainedTokenizerFast

    special = SPECIAL[family_key(family)]
    words = WORDS + DIGITS
    if vocab_size is not None:
        words += [f"w{i}" for i in range(max(0, vocab_size - len(special) - len(words) - 1))]
    unk = "<unk>" if "<unk>" in special else "[UNK]"
    names = ([unk] if unk not in special else []) + special + words
    vocab = {w: i for i, w in enumerate(names)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    pad = special[0]
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token=unk, eos_token="<|im_end|>", pad_token=pad,
                                   additional_special_tokens=[t for t in special if t not in (unk, pad)])


def chat_template(family: str) -> str:
    return _TURN.replace("VIDEO", VIDEO_MARK[family_key(family)])


def make_processor(family: str, config):
    """The family's processor for a preset config (image size and token counts matching the model)."""
    key = family_key(family)
    tok = make_tokenizer(family, config.text_config.vocab_size)
    template = chat_template(family)
    if key == "qwen3_vl":
        from transformers import Qwen3VLProcessor
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

        v = config.vision_config
        factor = v.patch_size * v.spatial_merge_size
        # frames arrive at the preset's frame size; the pixel budget never shrinks them further
        size = {"shortest_edge": factor * factor, "longest_edge": factor * factor * (1 << 20)}
        video = Qwen3VLVideoProcessor(patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
                                      merge_size=v.spatial_merge_size, size=size, cap_pixels_per_frame=False)
        image = Qwen2VLImageProcessor(patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
                                      merge_size=v.spatial_merge_size)
        return Qwen3VLProcessor(image_processor=image, tokenizer=tok, video_processor=video, chat_template=template)
    if key == "nemotron_h_omni":
        from transformers import ParakeetFeatureExtractor
        from transformers.models.nemotron_h_omni import (NemotronH_Omni_Reasoning_V3ImageProcessor,
                                                         NemotronH_Omni_Reasoning_V3Processor,
                                                         NemotronH_Omni_Reasoning_V3VideoProcessor)

        v = config.vision_config
        side = v.image_size // v.patch_size
        video = NemotronH_Omni_Reasoning_V3VideoProcessor(
            norm_mean=list(v.norm_mean), norm_std=list(v.norm_std), patch_size=v.patch_size,
            downsample_ratio=config.downsample_ratio, video_target_num_patches=side * side)
        image = NemotronH_Omni_Reasoning_V3ImageProcessor()
        return NemotronH_Omni_Reasoning_V3Processor(
            image_processor=image, video_processor=video, tokenizer=tok, feature_extractor=ParakeetFeatureExtractor(),
            chat_template=template, video_temporal_patch_dim=config.video_temporal_patch_size)
    if key == "llava_onevision":
        from transformers import LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor

        v = config.vision_config
        size = {"height": v.image_size, "width": v.image_size}
        patches = (v.image_size // v.patch_size) ** 2
        return LlavaOnevisionProcessor(
            image_processor=LlavaOnevisionImageProcessor(size=size), tokenizer=tok,
            video_processor=LlavaOnevisionVideoProcessor(size=size), num_image_tokens=patches,
            vision_feature_select_strategy=config.vision_feature_select_strategy, chat_template=template)
    raise ValueError(family)


def write_checkpoint(arch: str, preset: str, directory, seed: int = 0, **top_overrides) -> str:
    """Save a random-weight preset of a family as a checkpoint directory (the library's save_pretrained)."""
    import torch

    from architectures import ARCHITECTURES

    cls = ARCHITECTURES.get(arch)
    config = cls.make_config(preset, **top_overrides)
    torch.manual_seed(seed)
    model = cls.model_class(config)
    processor = make_processor(cls.family, config)
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id  # as the releases' generation_config
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)
