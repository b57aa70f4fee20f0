"""ViTDet's plain ViT as UNINEXT's ViT-H models use it (``uninext/backbone/vit.py`` and
``utils.py``).

Key names are UNINEXT's relative to ``detr.detr.backbone.0.backbone.``: ``pos_embed``,
``patch_embed.proj.*``, ``blocks.<i>.{norm1,attn.{qkv,proj,rel_pos_h,rel_pos_w},norm2,mlp.fc1,
mlp.fc2}.*`` and the pyramid ``fpn1.0.*`` (``fpn2``/``fpn3`` hold no weights).

UNINEXT's ViT-H: patch 16, width 1280, 32 blocks, 16 heads, MLP ratio 4, LayerNorm eps 1e-6,
decomposed relative positions in every block; 14x14 window attention in blocks
0, 1, 3, 4, 6, 7, 9, 10 and global attention in all others (UNINEXT keeps ViT-B's index list for
every depth, so blocks 11-31 of ViT-H are all global); absolute position embedding pre-trained at
224 px with a class-token slot, bicubically resized to the token grid; no final norm. The pyramid
is ConvTranspose2d(C, C/2, 2, 2) -> res3 (stride 8), the last map itself -> res4 (16) and
MaxPool2d(2) -> res5 (32). Drop path is the identity at inference and is left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["VIT_WINDOW_BLOCKS", "ViT", "abs_pos_embed", "rel_pos_table"]

# ViTDet's window blocks as UNINEXT configures them for every ViT size (``D2ViT``).
VIT_WINDOW_BLOCKS: tuple[int, ...] = (0, 1, 3, 4, 6, 7, 9, 10)


def abs_pos_embed(pos_embed: Tensor, *, has_cls_token: bool, grid: tuple[int, int]) -> Tensor:
    """The pre-trained absolute position embedding for a token grid.

    Args:
        pos_embed: (1, [1 +] S * S, C), a square pre-training grid with an optional leading
            class-token entry (dropped).
        has_cls_token: whether the first entry is the class token's.
        grid: (h, w) of the token grid.

    Returns:
        (1, h, w, C): the grid as is when it is S x S, else bicubically resized
        (align_corners False), as ViTDet's ``get_abs_pos``.
    """
    if has_cls_token:
        pos_embed = pos_embed[:, 1:]
    size = math.isqrt(pos_embed.shape[1])
    if size * size != pos_embed.shape[1]:
        raise ValueError(f"position embedding of {pos_embed.shape[1]} entries is not a square grid")
    table = pos_embed.reshape(1, size, size, -1)  # (1, S, S, C)
    if (size, size) == tuple(grid):
        return table
    resized = F.interpolate(
        table.permute(0, 3, 1, 2), size=grid, mode="bicubic", align_corners=False
    )  # (1, C, h, w)
    return resized.permute(0, 2, 3, 1)  # (1, h, w, C)


def rel_pos_table(rel_pos: Tensor, size: int) -> Tensor:
    """Relative position embeddings of every (query, key) pair along one axis of ``size`` tokens.

    Args:
        rel_pos: (L, head_dim) learned table for offsets -(L-1)/2 .. (L-1)/2.
        size: tokens along the axis (queries and keys alike: this is self-attention).

    Returns:
        (size, size, head_dim): entry [i, j] is the embedding of offset i - j. The table is first
        linearly resized to 2 * size - 1 rows when its length differs (global blocks at other
        input sizes than pre-training), as ViTDet's ``get_rel_pos``.
    """
    length = 2 * size - 1
    if rel_pos.shape[0] != length:
        rel_pos = F.interpolate(
            rel_pos.t()[None], size=length, mode="linear"
        )  # (1, head_dim, 2 size - 1)
        rel_pos = rel_pos[0].t()  # (2 size - 1, head_dim)
    coords = torch.arange(size, device=rel_pos.device)
    offsets = coords[:, None] - coords[None, :] + (size - 1)  # (size, size) in [0, 2 size - 2]
    return rel_pos[offsets]


class _Attention(nn.Module):
    """Multi-head self-attention on a (B, H, W, C) grid with decomposed relative positions."""

    def __init__(self, dim: int, *, num_heads: int, qkv_bias: bool, rel_pos_size: int | None):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = rel_pos_size is not None
        if rel_pos_size is not None:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, head_dim))

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, _ = x.shape
        tokens = height * width
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, heads, HW, head_dim)
        q, k, v = qkv.reshape(3, batch * self.num_heads, tokens, -1).unbind(0)  # (B heads, HW, d)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B heads, HW, HW)
        if self.use_rel_pos:
            rel_h = rel_pos_table(self.rel_pos_h, height)  # (H, H, d)
            rel_w = rel_pos_table(self.rel_pos_w, width)  # (W, W, d)
            grid_q = q.reshape(-1, height, width, q.shape[-1])  # (B heads, H, W, d)
            bias_h = torch.einsum("bhwc,hkc->bhwk", grid_q, rel_h)  # (B heads, H, W, H)
            bias_w = torch.einsum("bhwc,wkc->bhwk", grid_q, rel_w)  # (B heads, H, W, W)
            attn = attn.view(-1, height, width, height, width)
            attn = attn + bias_h[..., :, None] + bias_w[..., None, :]
            attn = attn.view(-1, tokens, tokens)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).view(batch, self.num_heads, height, width, -1)  # (B, heads, H, W, d)
        x = x.permute(0, 2, 3, 1, 4).reshape(batch, height, width, -1)  # (B, H, W, C)
        return self.proj(x)


class _PatchEmbed(nn.Module):
    """Non-overlapping patchify conv: (B, C_in, H, W) -> (B, H / p, W / p, C) channels last."""

    def __init__(self, *, in_channels: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # (B, h, w, C)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _window_partition(x: Tensor, window: int) -> tuple[Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * nWindows, window, window, C), zero-padding H and W up to multiples
    of ``window`` first; also returns the padded (Hp, Wp)."""
    batch, height, width, channels = x.shape
    pad_h = (window - height % window) % window
    pad_w = (window - width % window) % window
    # The padded tokens are zeros after norm1 and take part in their window's attention
    # (ViTDet masks nothing); kept so results match UNINEXT's on sizes that are not multiples.
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    padded_h, padded_w = height + pad_h, width + pad_w
    x = x.view(batch, padded_h // window, window, padded_w // window, window, channels)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, channels)
    return windows, (padded_h, padded_w)


def _window_unpartition(
    windows: Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]
) -> Tensor:
    """Inverse of :func:`_window_partition`, cropping the padding: -> (B, H, W, C)."""
    padded_h, padded_w = padded
    rows, cols = padded_h // window, padded_w // window
    x = windows.view(-1, rows, cols, window, window, windows.shape[-1])
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, padded_h, padded_w, windows.shape[-1])
    return x[:, : size[0], : size[1]]


class _Block(nn.Module):
    """Pre-norm transformer block; window attention when ``window_size`` > 0."""

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        window_size: int,
        rel_pos_size: int | None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(
            dim, num_heads=num_heads, qkv_bias=qkv_bias, rel_pos_size=rel_pos_size
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm1(x)  # (B, H, W, C)
        if self.window_size > 0:
            size = (x.shape[1], x.shape[2])
            windows, padded = _window_partition(y, self.window_size)  # (B nW, w, w, C)
            y = _window_unpartition(self.attn(windows), self.window_size, padded, size)
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Plain ViT with ViTDet's simple pyramid, returning res3, res4, res5.

    Attributes:
        out_channels: (embed_dim // 2, embed_dim, embed_dim).
        out_strides: (patch / 2, patch, 2 patch), (8, 16, 32) for patch 16.
        size_divisibility: 32 - UNINEXT pads ViT batches to a multiple of 32.
    """

    size_divisibility: int = 32

    def __init__(
        self,
        *,
        embed_dim: int = 1280,
        depth: int = 32,
        num_heads: int = 16,
        patch_size: int = 16,
        in_channels: int = 3,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        img_size: int = 1024,
        window_size: int = 14,
        window_block_indexes: Sequence[int] = VIT_WINDOW_BLOCKS,
        use_rel_pos: bool = True,
        use_abs_pos: bool = True,
        pretrain_img_size: int = 224,
        pretrain_use_cls_token: bool = True,
    ) -> None:
        """Args:
        embed_dim: token width C (ViT-H 1280, ViT-L 1024, ViT-B 768).
        depth: number of blocks (ViT-H 32).
        num_heads: attention heads (ViT-H 16).
        patch_size: patch side and token stride.
        in_channels: 3 for images, 4 for UNINEXT's template backbone.
        mlp_ratio: MLP hidden width / C.
        qkv_bias: whether the qkv projection has a bias.
        img_size: input size the global blocks' relative-position tables are made for
            (``img_size // patch_size`` tokens per side); other sizes resize the tables.
        window_size: window side (tokens) of the window-attention blocks.
        window_block_indexes: blocks with window attention; the others attend globally.
        use_rel_pos: decomposed relative positions in every block.
        use_abs_pos: add the absolute position embedding ``pos_embed``.
        pretrain_img_size: image size ``pos_embed`` was trained at.
        pretrain_use_cls_token: whether ``pos_embed`` has a leading class-token entry.
        """
        super().__init__()
        self.pretrain_use_cls_token = pretrain_use_cls_token
        self.patch_embed = _PatchEmbed(
            in_channels=in_channels, embed_dim=embed_dim, patch_size=patch_size
        )
        if use_abs_pos:
            positions = (pretrain_img_size // patch_size) ** 2 + int(pretrain_use_cls_token)
            self.pos_embed = nn.Parameter(torch.zeros(1, positions, embed_dim))
        else:
            self.pos_embed = None
        global_size = img_size // patch_size
        windows = set(window_block_indexes)
        self.blocks = nn.ModuleList()
        for i in range(depth):
            window = window_size if i in windows else 0
            self.blocks.append(
                _Block(
                    embed_dim,
                    num_heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    window_size=window,
                    rel_pos_size=(window or global_size) if use_rel_pos else None,
                )
            )
        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(embed_dim, embed_dim // 2, kernel_size=2, stride=2)
        )
        self.fpn2 = nn.Identity()
        self.fpn3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.out_channels = (embed_dim // 2, embed_dim, embed_dim)
        self.out_strides = (patch_size // 2, patch_size, 2 * patch_size)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Args:
            x: (B, C, H, W) normalised images, H and W multiples of 32.

        Returns:
            [res3, res4, res5]: (B, embed_dim / 2, 2h, 2w), (B, embed_dim, h, w),
            (B, embed_dim, h / 2, w / 2) with (h, w) = (H, W) / patch_size.
        """
        x = self.patch_embed(x)  # (B, h, w, C)
        if self.pos_embed is not None:
            x = x + abs_pos_embed(
                self.pos_embed,
                has_cls_token=self.pretrain_use_cls_token,
                grid=(x.shape[1], x.shape[2]),
            )
        for block in self.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)  # (B, C, h, w)
        return [self.fpn1(x), self.fpn2(x), self.fpn3(x)]
