"""Input checks shared by every family. Each error names the argument, what was given and what was expected.

Pixels must be finite: a NaN or inf pixel would silently turn every output of the image (and, through
attention, of the whole caption) into NaN, so it is rejected at the model input with a ValueError.
"""

import torch


def describe(value) -> str:
    """`tensor of shape (2, 3) and dtype torch.float32`, or the type name of a non-tensor."""
    if torch.is_tensor(value):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{type(value).__name__}"


def is_integer_tensor(value) -> bool:
    return (torch.is_tensor(value) and not value.is_floating_point() and not value.is_complex()
            and value.dtype != torch.bool)


def resolve_head_dim(hidden_size: int, num_heads: int, head_dim: int | None, prefix: str) -> int:
    """`head_dim`, or `hidden_size / num_heads` when unset; a ValueError naming `{prefix}num_attention_heads` when
    the heads cannot split the width."""
    if num_heads < 1:
        raise ValueError(f"{prefix}num_attention_heads must be >= 1, got {num_heads}")
    if head_dim is not None:
        return head_dim
    if hidden_size % num_heads:
        raise ValueError(
            f"{prefix}num_attention_heads ({num_heads}) must divide hidden_size ({hidden_size}), or set head_dim"
        )
    return hidden_size // num_heads


def check_token_ids(
    input_ids,
    name: str = "input_ids",
    *,
    vocab_size: int | None = None,
    vocab_field: str = "vocab_size",
    max_length: int | None = None,
    length_field: str = "max_position_embeddings",
    past_length: int = 0,
) -> None:
    """`input_ids (batch, sequence_length)`: an integer tensor, non-empty, ids in `[0, vocab_size)` and at most
    `max_length` tokens (cached ones included)."""
    if not is_integer_tensor(input_ids):
        raise TypeError(
            f"{name} must be an integer tensor of shape (batch, sequence_length), got {describe(input_ids)}"
        )
    if input_ids.ndim != 2:
        raise ValueError(f"{name} must have shape (batch, sequence_length), got {tuple(input_ids.shape)}")
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ValueError(
            f"{name} is empty (shape {tuple(input_ids.shape)}); expected at least one sequence of at least one token"
        )
    if vocab_size is not None:
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"{name} must lie in [0, {vocab_size}) ({vocab_field}), got values in [{low}, {high}]"
            )
    total = past_length + input_ids.shape[1]
    if max_length is not None and total > max_length:
        cached = f" ({past_length} cached + {input_ids.shape[1]} new)" if past_length else ""
        raise ValueError(
            f"{name} has {total} tokens{cached}, more than the context length {max_length} ({length_field})"
        )


def check_index_tensor(value, name: str, shape: tuple, *, high: int | None = None, high_field: str = "",
                       broadcast_batch: bool = False, ignore_index: int | None = None) -> None:
    """An integer tensor of `shape = (batch, sequence_length)` (batch 1 too with `broadcast_batch`) whose values
    lie in `[0, high)` or equal `ignore_index`: position ids, media times, labels."""
    layout = f"(batch, sequence_length) = {tuple(shape)}"
    if not is_integer_tensor(value):
        raise TypeError(f"{name} must be an integer tensor of shape {layout}, got {describe(value)}")
    if value.ndim != 2 or value.shape[1] != shape[1] or value.shape[0] not in ({shape[0], 1} if broadcast_batch
                                                                               else {shape[0]}):
        raise ValueError(f"{name} must have shape {layout}{' (or batch 1)' if broadcast_batch else ''}, "
                         f"got {tuple(value.shape)}")
    checked = value[value != ignore_index] if ignore_index is not None else value
    if checked.numel() and (int(checked.min()) < 0 or (high is not None and int(checked.max()) >= high)):
        limit = f"[0, {high})" + (f" ({high_field})" if high_field else "") if high is not None else "[0, inf)"
        ignored = f" or be {ignore_index} (ignored)" if ignore_index is not None else ""
        raise ValueError(f"{name} must lie in {limit}{ignored}, got values in [{int(value.min())}, {int(value.max())}]")


def check_attention_mask(attention_mask, expected_shape: tuple, name: str = "attention_mask",
                         layout: str = "(batch, sequence_length)") -> None:
    """A mask of `expected_shape` holding only 0 (padding) and 1 (token)."""
    if attention_mask is None:
        return
    if not torch.is_tensor(attention_mask) or attention_mask.is_complex():
        raise TypeError(f"{name} must be a tensor of 0 and 1 of shape {layout} = {tuple(expected_shape)}, "
                        f"got {describe(attention_mask)}")
    if tuple(attention_mask.shape) != tuple(expected_shape):
        raise ValueError(
            f"{name} must have shape {layout} = {tuple(expected_shape)}, got {tuple(attention_mask.shape)}"
        )
    if attention_mask.dtype != torch.bool and not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError(f"{name} must hold only 0 (padding) and 1 (token), got other values")


def check_finite(tensor: torch.Tensor, name: str) -> None:
    """Reject NaN / inf (a single one poisons every output that attends to it)."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        nan, inf = int(tensor.isnan().sum()), int(tensor.isinf().sum())
        raise ValueError(f"{name} holds {nan} NaN and {inf} infinite values; expected finite values "
                         "(check the image loading and normalisation)")


def check_pixel_values(
    pixel_values,
    name: str = "pixel_values",
    *,
    num_channels: int,
    image_size: int | None,
    layouts: tuple[tuple[str, ...], ...] = (("batch",),),
    size_hint: str = "",
) -> None:
    """`pixel_values (*leading, num_channels, image_size, image_size)`: a finite float tensor with one of the
    accepted leading layouts (e.g. `("batch",)` or `("batch", "num_media")`), no empty dimension."""
    side = "H" if image_size is None else str(image_size)
    expected = " or ".join(f"({', '.join(lead)}, {num_channels}, {side}, {side})" for lead in layouts)
    hint = f" (num_channels={num_channels}, image_size={image_size}{size_hint})"
    if not torch.is_tensor(pixel_values) or not pixel_values.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor of shape {expected}, got {describe(pixel_values)}")
    ranks = {len(lead) + 3 for lead in layouts}
    size_ok = image_size is None or tuple(pixel_values.shape[-2:]) == (image_size, image_size)
    if pixel_values.ndim not in ranks or pixel_values.shape[-3] != num_channels or not size_ok:
        raise ValueError(f"{name} must have shape {expected}{hint}, got {tuple(pixel_values.shape)}")
    if 0 in pixel_values.shape:
        raise ValueError(f"{name} is empty (shape {tuple(pixel_values.shape)}); expected at least one image")
    check_finite(pixel_values, name)


def check_embeddings(embeds, name: str, *, layout: tuple[str, ...], width: int, width_field: str) -> None:
    """Precomputed features `(*layout, width)`: a finite float tensor, no empty dimension."""
    expected = f"({', '.join(layout)}, {width})"
    if not torch.is_tensor(embeds) or not embeds.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor of shape {expected}, got {describe(embeds)}")
    if embeds.ndim != len(layout) + 1 or embeds.shape[-1] != width:
        raise ValueError(f"{name} must have shape {expected} ({width_field}={width}), got {tuple(embeds.shape)}")
    if 0 in embeds.shape:
        raise ValueError(f"{name} is empty (shape {tuple(embeds.shape)})")
    check_finite(embeds, name)


def check_same_batch(reference: tuple[str, torch.Tensor], *others: tuple[str, torch.Tensor | None]) -> None:
    """Every given tensor has the batch size of `reference`."""
    ref_name, ref = reference
    for name, tensor in others:
        if tensor is not None and tensor.shape[0] != ref.shape[0]:
            raise ValueError(f"{name} has batch size {tensor.shape[0]} but {ref_name} has {ref.shape[0]}; "
                             "expected the same batch size")


def check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_texts_per_image(texts: tuple[str, torch.Tensor], images: tuple[str, torch.Tensor | None],
                          sequences_per_image: int) -> None:
    """Texts come in groups of `sequences_per_image` consecutive rows per image (generate()'s beams)."""
    check_positive_int(sequences_per_image, "sequences_per_image")
    if sequences_per_image == 1:
        return check_same_batch(texts, images)
    (text_name, text), (image_name, image) = texts, images
    if image is not None and text.shape[0] != image.shape[0] * sequences_per_image:
        raise ValueError(f"{text_name} has batch size {text.shape[0]} but {image_name} has {image.shape[0]} with "
                         f"sequences_per_image={sequences_per_image}; expected {image.shape[0] * sequences_per_image}")


def check_output_options(model_name: str, kwargs: dict) -> None:
    """Refuse `output_attentions` / `output_hidden_states` (from forward or generate()) instead of ignoring them,
    which made `generate(..., return_dict_in_generate=True)` fail deep inside transformers."""
    asked = [name for name in ("output_attentions", "output_hidden_states") if kwargs.get(name)]
    if asked:
        raise ValueError(f"{' and '.join(asked)}=True is not supported by {model_name}: it returns no per-layer "
                         "attentions or hidden states (register forward hooks on its layers to collect them)")


def check_generation_config(generation_config) -> None:
    """Reject generation settings that cannot produce a valid sequence (transformers accepts some of them
    silently, e.g. `top_p=1.5`, or fails deep inside, e.g. `num_beams=0`)."""
    g = generation_config
    integers = {"max_new_tokens", "max_length", "min_new_tokens", "num_beams", "num_return_sequences", "top_k"}
    checks = [
        ("max_new_tokens", g.max_new_tokens, lambda v: v >= 1, "an integer >= 1"),
        ("max_length", g.max_length, lambda v: v >= 1, "an integer >= 1"),
        ("min_new_tokens", g.min_new_tokens, lambda v: v >= 0, "an integer >= 0"),
        ("num_beams", g.num_beams, lambda v: v >= 1, "an integer >= 1"),
        ("num_return_sequences", g.num_return_sequences, lambda v: v >= 1, "an integer >= 1"),
        ("top_k", g.top_k, lambda v: v >= 0, "an integer >= 0 (0 disables top-k)"),
        ("top_p", g.top_p, lambda v: 0 < v <= 1, "a float in (0, 1]"),
        ("min_p", g.min_p, lambda v: 0 <= v <= 1, "a float in [0, 1]"),
        ("typical_p", g.typical_p, lambda v: 0 < v <= 1, "a float in (0, 1]"),
        ("temperature", g.temperature, lambda v: v > 0, "a float > 0 (use do_sample=False for greedy decoding)"),
        ("repetition_penalty", g.repetition_penalty, lambda v: v > 0, "a float > 0"),
    ]
    for name, value, valid, expected in checks:
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int if name in integers else (int, float)):
            raise TypeError(f"{name} must be {expected}, got {value!r}")
        if value != value or not valid(value):  # value != value: NaN
            raise ValueError(f"{name} must be {expected}, got {value!r}")
