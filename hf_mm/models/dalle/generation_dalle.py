"""Image-token sampling for DALL-E with transformers' `generate()`.

- `ImageVocabularyLogitsProcessor` restricts sampling to the image codes of the unified vocabulary;
- dalle-pytorch's sampling defaults live in `model.generation_config` (`do_sample=True`, `top_k` of
  `filter_thres=0.5`), so transformers' precedence holds: kwargs > `generation_config=` > `model.generation_config`;
- `filter_thres` keeps the top `max(int((1 - filter_thres) * V), 1)` logits (an explicit `top_k`);
- outputs index the codebook: `sequences`, `scores` / `logits` (image-code columns only) and what a `streamer` gets;
- `cond_scale` runs the null-text branch in the same batched, cached forward (see `DalleForImageGeneration`);
- priming: the first `num_init_img_tokens` codes of `init_image` are appended to the prompt;
- `generate_images` decodes with the dVAE, optionally reranks with a contrastive model, and returns PIL images;
- options that cannot drive DALL-E's fixed-length image decoding (assisted decoding, transformers' CFG, chunked
  prefill, static caches) are refused by name before any forward pass (`UNSUPPORTED_GENERATE_OPTIONS`).
"""

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.cache_utils import DynamicCache
from transformers.generation.streamers import BaseStreamer
from transformers.modeling_outputs import ModelOutput

from hf_mm.layers.validation import check_same_batch


class ImageVocabularyLogitsProcessor(LogitsProcessor):
    """Sets every logit outside `[start, end)` to -inf. `scores (b, V) -> (b, V)`."""

    def __init__(self, start: int, end: int):
        self.start, self.end = start, end

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        keep = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        keep[self.start : self.end] = True
        return scores.masked_fill(~keep, float("-inf"))


class ImageCodeStreamer(BaseStreamer):
    """Hands `streamer` the codebook indices `generate()` returns: of the prompt `(b, n)` only the primed image
    codes are kept, and they and each new token `(b,)` are shifted from unified ids by `-text_vocab_size`."""

    def __init__(self, streamer, text_seq_len: int, text_vocab_size: int):
        self.streamer, self.text_seq_len, self.text_vocab_size = streamer, text_seq_len, text_vocab_size
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() puts the prompt first: keep only its primed image codes
            self.prompt_seen = True
            value = value[..., self.text_seq_len :]
            if not value.numel():
                return
        self.streamer.put(value - self.text_vocab_size)

    def end(self) -> None:
        self.streamer.end()


# generate() options DALL-E's image decoding cannot run: (name, values that leave it off, why). Checked up front
# (they used to fail deep inside: in a draft model's generate(), or with an input_ids shape error in forward())
_WHOLE_IMAGE = ("DALL-E's generate() always produces the whole image and returns its codebook indices, not the "
                "few token ids a draft needs")
UNSUPPORTED_GENERATE_OPTIONS = (
    ("assistant_model", (None,), f"assisted decoding drafts a few tokens at a time with the assistant's generate(); "
                                 f"{_WHOLE_IMAGE}"),
    ("assistant_early_exit", (None,), f"it drafts with the model's own early layers through its generate(); "
                                      f"{_WHOLE_IMAGE}"),
    ("prompt_lookup_num_tokens", (None,), "prompt lookup drafts tokens copied from the prompt, which can run past "
                                          "the image's last position (image_seq_len); decode without it"),
    ("use_mtp", (None, False), "DALL-E has no multi-token prediction layers to draft with"),
    ("guidance_scale", (None, 1), "transformers' classifier-free guidance runs its unconditional pass on the last "
                                  "token alone, while DALL-E needs the whole text prompt; use cond_scale, DALL-E's "
                                  "own guidance (a null-text branch in the same cached forward)"),
    ("prefill_chunk_size", (None,), "the text prompt (text_seq_len ids, bos and per-position pads) must reach "
                                    "forward() in one piece; leave it unset"),
    ("cache_implementation", (None, "dynamic"), "DALL-E's cache is a lazily grown DynamicCache (attention keys/values "
                                                "and, with shift_tokens, the token-shift history in extra slots); "
                                                "leave cache_implementation unset"),
    ("is_assistant", (None, False), f"it cannot be another model's assistant_model, since {_WHOLE_IMAGE}"),
)


def _requested(name: str, kwargs: dict, *configs):
    """The value generate() will use for `name`, with transformers' precedence: a kwarg (even None), else the first
    of `configs` (the `generation_config=` argument, then `model.generation_config`) that sets it."""
    if name in kwargs:
        return kwargs[name]
    return next((value for config in configs if (value := getattr(config, name, None)) is not None), None)


def check_supported_generate_options(model_name: str, kwargs: dict, model_generation_config) -> None:
    """Refuse `UNSUPPORTED_GENERATE_OPTIONS` set in `kwargs`, `kwargs["generation_config"]` or
    `model_generation_config`, naming the option and why."""
    for name, off, reason in UNSUPPORTED_GENERATE_OPTIONS:
        value = _requested(name, kwargs, kwargs.get("generation_config"), model_generation_config)
        if value in off:
            continue
        shown = name if isinstance(value, torch.nn.Module) else f"{name}={value!r}"
        raise ValueError(f"{shown} is not supported by {model_name}.generate(): {reason}")


@dataclass
class DalleImageGenerationOutput(ModelOutput):
    """
    image_ids: `(b * k, fmap**2)` sampled codebook indices (`k = num_return_sequences`, a prompt's images adjacent).
    pixel_values: `(b * k, c, H, W)` dVAE decodings (normalised image space).
    images: the decodings as PIL images.
    scores: `(b * k,)` reranker similarity of each image with its own prompt, when a reranker was given; the
        prompts keep their order and each prompt's `k` images are sorted best first.
    """

    image_ids: torch.LongTensor | None = None
    pixel_values: torch.FloatTensor | None = None
    images: list | None = None
    scores: torch.FloatTensor | None = None


class DalleGenerationMixin:
    """generate() / generate_images() / decode_image_tokens() of `DalleForImageGeneration`."""

    default_filter_thres = 0.5  # dalle-pytorch's generate_images default

    def filter_thres_top_k(self, filter_thres: float) -> int:
        """dalle-pytorch's `top_k(logits, thres)`: keep `max(int((1 - filter_thres) * V), 1)` of the V logits."""
        if isinstance(filter_thres, bool) or not isinstance(filter_thres, (int, float)) or not 0 <= filter_thres < 1:
            raise ValueError(f"filter_thres must be in [0, 1), got {filter_thres!r}")
        return max(int((1 - filter_thres) * self.config.vocab_size), 1)

    def generation_defaults(self, generation_config) -> dict:
        """dalle-pytorch samples: `do_sample` defaults to True and, when sampling, `top_k` to
        `filter_thres_top_k(0.5)`."""
        defaults = {"do_sample": True}
        if generation_config.do_sample is not False:
            defaults["top_k"] = self.filter_thres_top_k(self.default_filter_thres)
        return defaults

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        # token-shift history needs slots beyond num_hidden_layers: a lazily grown cache
        if (model_kwargs.get("past_key_values") is None and generation_config.use_cache is not False
                and generation_config.cache_implementation in (None, "dynamic")):
            model_kwargs["past_key_values"] = DynamicCache()
            return
        return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)

    def _reorder_cache(self, past_key_values, beam_idx):
        if past_key_values.layers and past_key_values.layers[0].keys.shape[0] == 2 * beam_idx.shape[0]:
            beam_idx = torch.cat((beam_idx, beam_idx + beam_idx.shape[0]))  # guided: null rows follow
        past_key_values.reorder_cache(beam_idx)
        return past_key_values

    def image_prompt_codes(self, init_image: torch.Tensor, num_init_img_tokens: int | None) -> torch.Tensor:
        """First codes of `init_image (b, c, H, W)` as unified ids `(b, k)` (dalle-pytorch default k = 0.4375 N)."""
        n = self.config.image_seq_len
        k = int(0.4375 * n) if num_init_img_tokens is None else num_init_img_tokens
        if not 0 < k < n:
            raise ValueError(f"num_init_img_tokens must be in (0, {n}), got {k}")
        self.vae.check_pixel_values(init_image, "init_image")
        return self.vae.get_codebook_indices(init_image)[:, :k] + self.config.text_vocab_size

    def generate(self, input_ids=None, generation_mode: str = "image", filter_thres: float | None = None,
                 cond_scale: float = 1.0, init_image=None, num_init_img_tokens=None, logits_processor=None,
                 streamer=None, **kwargs):
        """Sample image codes for `input_ids (b, text_seq_len)` text ids (0 = padding).

        Returns `(b, fmap**2)` codebook indices. With `return_dict_in_generate`, `sequences` are those indices and
        each `scores[i]` / `logits[i]` is `(b, num_image_tokens)` over the same codebook (the image-code columns of
        the unified vocabulary; the others are masked), so `compute_transition_scores` works; a `streamer` gets the
        codes too. Sampling follows `model.generation_config` (`do_sample=True`, dalle-pytorch's `top_k`; make greedy
        the saved default with `generation_config.update(do_sample=False, top_k=None)`); an explicit `filter_thres`
        in [0, 1) sets `top_k = max(int((1 - filter_thres) * V), 1)`.
        """
        if generation_mode != "image":
            raise ValueError(f"generation_mode must be 'image' (DALL-E only outputs images), got {generation_mode!r}")
        check_supported_generate_options(type(self).__name__, kwargs, self.generation_config)
        config = self.config
        forced = {}  # DALL-E's own generation settings, applied like the caller's kwargs
        if filter_thres is not None:
            if kwargs.get("top_k") is not None:
                raise ValueError("pass either filter_thres or top_k, not both (filter_thres sets top_k)")
            forced["top_k"] = self.filter_thres_top_k(filter_thres)
        if input_ids is None or input_ids.ndim != 2 or input_ids.shape[1] != config.text_seq_len:
            raise ValueError(f"input_ids must have shape (batch, text_seq_len={config.text_seq_len}), got "
                             f"{None if input_ids is None else tuple(input_ids.shape)}")
        if init_image is not None:
            prompt_codes = self.image_prompt_codes(init_image, num_init_img_tokens)
            check_same_batch(("input_ids", input_ids), ("init_image", prompt_codes))
            input_ids = torch.cat((input_ids, prompt_codes), dim=1)
        elif num_init_img_tokens is not None:
            raise ValueError(f"num_init_img_tokens={num_init_img_tokens} primes with the codes of init_image: pass "
                             "init_image too, or leave num_init_img_tokens None")
        new_tokens = config.text_seq_len + config.image_seq_len - input_ids.shape[1]
        total = input_ids.shape[1] + new_tokens
        generation_config = kwargs.get("generation_config")
        for name, fits in (("max_new_tokens", lambda v: v >= new_tokens), ("min_new_tokens", lambda v: v <= new_tokens),
                           ("max_length", lambda v: v >= total), ("min_length", lambda v: v <= total)):
            value = kwargs.get(name, getattr(generation_config, name, None))
            if value is not None and not fits(value):  # e.g. the pipelines' default max_new_tokens=256 fits
                raise ValueError(f"{name}={value}: DALL-E always generates the image's remaining {new_tokens} codes "
                                 f"(image_seq_len={config.image_seq_len}, {total} tokens with the prompt)")
            kwargs.pop(name, None)
        forced["max_new_tokens"] = forced["min_new_tokens"] = new_tokens
        if generation_config is not None:  # transformers wants a generation_config or generation kwargs, not both
            kwargs["generation_config"] = copy.deepcopy(generation_config)
            kwargs["generation_config"].update(**forced)
        else:
            kwargs.update(forced)
        processors = LogitsProcessorList(logits_processor or [])
        processors.append(ImageVocabularyLogitsProcessor(config.text_vocab_size, config.vocab_size))
        if cond_scale != 1:
            kwargs["cond_scale"] = cond_scale
        if streamer is not None:
            streamer = ImageCodeStreamer(streamer, config.text_seq_len, config.text_vocab_size)
        out = super().generate(input_ids=input_ids, logits_processor=processors, streamer=streamer, **kwargs)
        sequences = out if isinstance(out, torch.Tensor) else out.sequences
        codes = sequences[:, -config.image_seq_len :] - config.text_vocab_size
        if isinstance(out, torch.Tensor):
            return codes
        out.sequences = codes
        for name in ("scores", "logits"):
            if getattr(out, name, None) is not None:
                setattr(out, name, tuple(step[:, config.text_vocab_size : config.vocab_size] for step in out[name]))
        return out

    def compute_transition_scores(self, sequences, scores, beam_indices=None, normalize_logits: bool = False):
        """transformers' helper on `generate()`'s outputs, whose `sequences (b, n)` and
        `scores[i] (b, num_image_tokens)` index the codebook: both go back to the unified vocabulary for it."""
        offset = self.config.text_vocab_size
        unified = tuple(F.pad(step, (offset, 0), value=float("-inf")) for step in scores)
        return super().compute_transition_scores(sequences + offset, unified, beam_indices, normalize_logits)

    def decode_image_tokens(self, image_ids: torch.LongTensor) -> torch.FloatTensor:
        """`(b, fmap**2)` codebook indices -> `(b, c, H, W)` displayable images in [0, 1] (dVAE decoding with its
        input normalisation undone); used by the any-to-any pipeline."""
        return self.vae_to_unit_range(self.vae.decode(image_ids))

    @torch.no_grad()
    def generate_images(self, input_ids, reranker=None, reranker_input_ids=None, **generate_kwargs):
        """`generate()` + dVAE decoding + PIL conversion. `reranker` is any model whose `get_text_features` and
        `get_image_features` return pooled embeddings, one `(b, d)` vector per text and per image of the same width
        `d` (a tensor, or a ModelOutput with `pooler_output`): transformers CLIP, x-clip CLIP without
        `use_all_token_embeds`, CoCa. Token-level features (x-clip's FILIP, `(b, n, d)` / `(b, p, d)`) raise a
        ValueError. Each image is scored by cosine similarity with its own prompt (`reranker_input_ids (b, n)`,
        default `input_ids`), and each prompt's `num_return_sequences` images are sorted best first (the prompts
        keep their order)."""
        from .processing_dalle import to_pil_images

        image_ids = self.generate(input_ids, **generate_kwargs)
        pixel_values = self.vae.decode(image_ids)
        scores = None
        if reranker is not None:
            text = reranker_input_ids if reranker_input_ids is not None else input_ids
            check_same_batch(("input_ids", input_ids), ("reranker_input_ids", text))
            per_prompt = image_ids.shape[0] // text.shape[0]
            images01 = self.vae_to_unit_range(pixel_values)
            text_features = _features(reranker.get_text_features(input_ids=text.repeat_interleave(per_prompt, 0)))
            image_features = _features(reranker.get_image_features(pixel_values=images01))
            _check_pooled_features(text_features, image_features, image_ids.shape[0])
            scores = (F.normalize(text_features, dim=-1) * F.normalize(image_features, dim=-1)).sum(-1)
            order = scores.view(-1, per_prompt).argsort(dim=-1, descending=True)
            order = (order + torch.arange(0, scores.shape[0], per_prompt, device=order.device)[:, None]).flatten()
            image_ids, pixel_values, scores = image_ids[order], pixel_values[order], scores[order]
        images = to_pil_images(self.vae_to_unit_range(pixel_values))
        return DalleImageGenerationOutput(image_ids=image_ids, pixel_values=pixel_values, images=images, scores=scores)

    def vae_to_unit_range(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Undo the dVAE's input normalisation and clamp to [0, 1]. `(b, c, H, W) -> (b, c, H, W)`."""
        normalization = self.config.vae_config.normalization
        if normalization is not None:
            means, stds = (torch.as_tensor(t).to(pixel_values)[None, :, None, None] for t in normalization)
            pixel_values = pixel_values * stds + means
        return pixel_values.clamp(0, 1)


def _check_pooled_features(text_features, image_features, batch: int) -> None:
    """The cosine score needs one `(batch, d)` vector per text and per image, of the same width."""
    shapes = (tuple(text_features.shape), tuple(image_features.shape))
    if text_features.ndim == 2 and shapes[0] == shapes[1] and shapes[0][0] == batch:
        return
    raise ValueError(
        f"reranker must return pooled features, one (batch, dim) vector per text and per image ({batch} of each, "
        f"the same dim): its get_text_features returned shape {shapes[0]} and get_image_features {shapes[1]}. "
        "Token-level features (e.g. x-clip with use_all_token_embeds=True, FILIP) cannot be scored by cosine "
        "similarity: rerank with a model that has pooled embeddings"
    )


def _features(output):
    """Accept a tensor or a ModelOutput (`pooler_output` / first field) from a reranker."""
    if isinstance(output, torch.Tensor):
        return output
    return getattr(output, "pooler_output", None) if getattr(output, "pooler_output", None) is not None else output[0]
