"""The DUSt3R network (``AsymmetricCroCo3DStereo``) in plain PyTorch, weight-compatible with the releases.

A shared ViT encoder embeds each image; two decoders (one per view, ``dec_blocks`` / ``dec_blocks2``) exchange
information by cross-attention block by block; ``downstream_head1`` predicts view 1's points in camera 1 and
``downstream_head2`` view 2's points, also in camera 1. Images are (B, 3, H, W) in [-1, 1], H and W multiples
of the patch size.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from lit3d.teachers.dust3r.heads import make_head
from lit3d.teachers.dust3r.layers import Block, DecoderBlock, PatchEmbed, rope_tables
from lit3d.teachers.dust3r.presets import Dust3rArch


class Dust3rNet(nn.Module):
    """DUSt3R: encoder, two cross-attending decoders and two heads; see the module doc."""

    def __init__(self, arch: Dust3rArch):
        super().__init__()
        self.arch = arch
        a = arch
        self.patch_embed = PatchEmbed(a.patch_size, a.enc_embed_dim)
        # unused at inference; kept because every released state dict has it (CroCo pre-training)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, a.dec_embed_dim))
        self.enc_blocks = nn.ModuleList([Block(a.enc_embed_dim, a.enc_num_heads, a.mlp_ratio)
                                         for _ in range(a.enc_depth)])
        self.enc_norm = nn.LayerNorm(a.enc_embed_dim, eps=1e-6)
        self.decoder_embed = nn.Linear(a.enc_embed_dim, a.dec_embed_dim)
        self.dec_blocks = nn.ModuleList([DecoderBlock(a.dec_embed_dim, a.dec_num_heads, a.mlp_ratio)
                                         for _ in range(a.dec_depth)])
        self.dec_norm = nn.LayerNorm(a.dec_embed_dim, eps=1e-6)
        self.dec_blocks2 = nn.ModuleList([DecoderBlock(a.dec_embed_dim, a.dec_num_heads, a.mlp_ratio)
                                          for _ in range(a.dec_depth)])
        self.downstream_head1 = self.make_head(a)
        self.downstream_head2 = self.make_head(a)

    def make_head(self, arch: Dust3rArch) -> nn.Module:
        """One view's prediction head (a subclass builds its family's heads)."""
        return make_head(arch)

    def init_weights(self) -> "Dust3rNet":
        """CroCo's initialisation (xavier-uniform linears and patch projection); for random-weight runs."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.mask_token, std=0.02)
        # a random head points anywhere; bias z > 0 so that random-weight labels lie in front of the cameras
        # and the stages after the teacher (alignment, training) get usable input
        p2 = self.arch.patch_size**2
        for head in (self.downstream_head1, self.downstream_head2):
            with torch.no_grad():
                if hasattr(head, "dpt"):
                    head.dpt.head[-1].bias[2] = 1.0
                else:  # channel c of pixel k is output c * p^2 + k (pixel shuffle)
                    head.proj.bias[2 * p2: 3 * p2] = 1.0
        return self

    def encode(self, img_B3HW: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder tokens (B, N, enc_dim) after the final norm, and patch positions (B, N, 2) as (y, x)."""
        x_BNC, pos_BN2 = self.patch_embed(img_B3HW)
        rope = rope_tables(pos_BN2, self.arch.enc_embed_dim // self.arch.enc_num_heads, self.arch.rope_base)
        for blk in self.enc_blocks:
            x_BNC = blk(x_BNC, rope)
        return self.enc_norm(x_BNC), pos_BN2

    def decode(self, feat1_BNC: Tensor, pos1_BN2: Tensor, feat2_BMC: Tensor, pos2_BM2: Tensor
               ) -> tuple[list[Tensor], list[Tensor]]:
        """Per view: [encoder tokens, decoder block 1..L outputs], the last one layer-normalised."""
        head_dim = self.arch.dec_embed_dim // self.arch.dec_num_heads
        rope1 = rope_tables(pos1_BN2, head_dim, self.arch.rope_base)
        rope2 = rope_tables(pos2_BM2, head_dim, self.arch.rope_base)
        out1, out2 = [feat1_BNC], [feat2_BMC]
        f1, f2 = self.decoder_embed(feat1_BNC), self.decoder_embed(feat2_BMC)
        for blk1, blk2 in zip(self.dec_blocks, self.dec_blocks2):
            # both sides read the previous block's outputs of both views
            f1, f2 = blk1(f1, f2, rope1, rope2), blk2(f2, f1, rope2, rope1)
            out1.append(f1)
            out2.append(f2)
        out1[-1], out2[-1] = self.dec_norm(out1[-1]), self.dec_norm(out2[-1])
        return out1, out2

    def predict(self, dec1: list[Tensor], dec2: list[Tensor], hw1: tuple[int, int], hw2: tuple[int, int]
                ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Heads at image sizes (H, W) in fp32 with autocast off, as the official model; outputs: :meth:`forward`."""
        with torch.autocast(device_type=dec1[-1].device.type, enabled=False):
            pred1 = self.downstream_head1([t.float() for t in dec1], hw1)
            pred2 = self.downstream_head2([t.float() for t in dec2], hw2)
        pred2 = dict(pred2)  # any further outputs (MASt3R's descriptors) keep their names
        pred2["pts3d_in_other_view"] = pred2.pop("pts3d")
        return pred1, pred2

    def forward_features(self, feat1: Tensor, pos1: Tensor, feat2: Tensor, pos2: Tensor, hw1: tuple[int, int],
                         hw2: tuple[int, int] | None = None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Decoders and heads on already encoded views (lets a batch share encoder passes)."""
        dec1, dec2 = self.decode(feat1, pos1, feat2, pos2)
        return self.predict(dec1, dec2, hw1, hw2 or hw1)

    def forward(self, view1: dict[str, Tensor], view2: dict[str, Tensor]
                ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Official call: views with ``img`` (B, 3, H, W) in [-1, 1] and optional ``true_shape`` (B, 2) = (H, W).

        Returns ``pred1 = {pts3d (B, H, W, 3), conf (B, H, W)}`` (view 1 in camera 1) and
        ``pred2 = {pts3d_in_other_view, conf}`` (view 2 in camera 1).
        """
        img1, img2 = view1["img"], view2["img"]
        if img1.shape[-2:] == img2.shape[-2:]:  # one batched encoder pass, as the official model
            feat, pos = self.encode(torch.cat([img1, img2]))
            (feat1, feat2), (pos1, pos2) = feat.chunk(2), pos.chunk(2)
        else:
            (feat1, pos1), (feat2, pos2) = self.encode(img1), self.encode(img2)
        dec1, dec2 = self.decode(feat1, pos1, feat2, pos2)
        return self.predict(dec1, dec2, _image_hw(view1), _image_hw(view2))


def _image_hw(view: dict[str, Tensor]) -> tuple[int, int]:
    """(H, W) the head predicts at: ``true_shape`` (all entries equal) or the image size."""
    shape_B2 = view.get("true_shape")
    if shape_B2 is None:
        return int(view["img"].shape[-2]), int(view["img"].shape[-1])
    if not bool((shape_B2 == shape_B2[:1]).all()):
        raise ValueError("all true_shape entries of a DUSt3R batch must be equal")
    return int(shape_B2[0][0]), int(shape_B2[0][1])
