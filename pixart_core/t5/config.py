"""T5 encoder configuration (Raffel et al. 2020, arXiv:1910.10683; v1.1 gated-GELU feed-forward, arXiv:2002.05202).

Field names follow Hugging Face `config.json` so that a config reads and writes without renaming.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

# Activation names as they appear in T5 configs; "gated-gelu" means gelu_new (the tanh approximation).
ACTIVATIONS = ("relu", "gelu", "gelu_new", "gelu_pytorch_tanh", "silu", "swish")


@dataclass(frozen=True)
class T5Config:
    """Hyper-parameters of a T5 encoder stack.

    Parameters:
        vocab_size: embedding rows (32128 for every T5 v1.1 size: 32100 pieces + 28 unused).
        d_model: hidden width (4096 for XXL).
        d_kv: width of one attention head (64); heads * d_kv need not equal d_model (T5 v1.0 11B).
        d_ff: feed-forward width (10240 for v1.1-XXL).
        num_layers: encoder blocks (24 for XXL).
        num_heads: attention heads (64 for XXL).
        relative_attention_num_buckets: relative-position buckets, half per direction (32).
        relative_attention_max_distance: distance beyond which all positions share one bucket (128).
        layer_norm_epsilon: RMS-norm epsilon (1e-6).
        feed_forward_proj: "gated-gelu" (v1.1: GELU(x W0) * (x W1)) or "relu" (v1.0: ReLU(x Wi)); "gated-<act>" or "<act>".
    """

    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                     "relative_attention_num_buckets", "relative_attention_max_distance"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"T5Config.{name} must be a positive integer, not {value!r}")
        if self.relative_attention_num_buckets < 4 or self.relative_attention_num_buckets % 2:
            raise ValueError(f"relative_attention_num_buckets must be even and >= 4, not "
                             f"{self.relative_attention_num_buckets}")
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated") or self.dense_act_fn not in ACTIVATIONS:
            raise ValueError(f"unsupported feed_forward_proj {self.feed_forward_proj!r}: use 'gated-gelu' (T5 v1.1), "
                             f"'relu' (T5 v1.0) or 'gated-<act>' / '<act>' with act in {ACTIVATIONS}")

    @property
    def is_gated_act(self) -> bool:
        """Two input projections (wi_0, wi_1) multiplied together (GEGLU), as in T5 v1.1."""
        return self.feed_forward_proj.startswith("gated-")

    @property
    def dense_act_fn(self) -> str:
        """The activation name; "gated-gelu" maps to gelu_new (tanh approximation), as in the original v1.1."""
        if self.feed_forward_proj == "gated-gelu":
            return "gelu_new"
        return self.feed_forward_proj.split("-")[-1]

    @property
    def inner_dim(self) -> int:
        """Width of q, k, v: num_heads * d_kv."""
        return self.num_heads * self.d_kv

    @classmethod
    def from_dict(cls, data: dict) -> "T5Config":
        """Build from a Hugging Face T5 `config.json` dict (unknown fields are ignored)."""
        names = set(cls.__dataclass_fields__)
        kwargs = {k: v for k, v in data.items() if k in names}
        aliases = {"hidden_size": "d_model", "num_attention_heads": "num_heads", "num_hidden_layers": "num_layers"}
        for alias, name in aliases.items():
            if alias in data and name not in kwargs:
                kwargs[name] = data[alias]
        if "feed_forward_proj" not in kwargs:  # transformers' default when the field is absent
            kwargs["feed_forward_proj"] = "relu"
        return cls(**kwargs)

    def to_dict(self) -> dict:
        """A Hugging Face `config.json` for T5EncoderModel (the fields transformers' T5Config reads)."""
        out = asdict(self)
        out.update({
            "architectures": ["T5EncoderModel"],
            "model_type": "t5",
            "num_decoder_layers": self.num_layers,
            "dense_act_fn": self.dense_act_fn,
            "is_gated_act": self.is_gated_act,
            "dropout_rate": 0.1,
            "initializer_factor": 1.0,
            "is_encoder_decoder": True,
            "decoder_start_token_id": 0,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "tie_word_embeddings": False,
            "use_cache": True,
        })
        return out

    def replace(self, **changes) -> "T5Config":
        return replace(self, **changes)


# google/t5-v1_1-xxl (the text encoder of every PixArt model): 4.76B encoder parameters.
T5_V1_1_XXL = T5Config()
