"""Rewrite a U-Net's transformer regions into the Neural Engine's form: (B, C, 1, S) tensors, 1x1 convs, attention per head."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lgc.compiler.pass_manager import Pass, PassResult, register_pass
from lgc.passes.fusion.graph_utils import arg, copy_module_meta, refresh_meta, shape_of

aten = torch.ops.aten

LAYOUT = (aten.view.default, aten.reshape.default, aten.transpose.int, aten.permute.default, aten._unsafe_view.default)
# Ops that act on each element the same way whatever the layout: rebuilt on the (B, C, 1, S) value as they are.
POINTWISE = {aten.gelu.default, aten.silu.default, aten.relu.default, aten.sigmoid.default, aten.tanh.default,
             aten.dropout.default, aten.clone.default, aten.contiguous.default, aten.to.dtype, aten.alias.default}
BINARY = {aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor}


class NotInForm(Exception):
    """The region holds an op the rewrite does not know: it is left as it was."""


@register_pass
class TransformerAsBc1s(Pass):
    """Give each transformer region the layout Apple's Neural Engine recipe asks for.

    Before: ``x (B,C,H,W) -> permute(0,2,3,1) -> reshape(B,HW,C)``, then layer
            norms over the last axis, ``linear`` projections, attention as
            ``bmm/softmax/bmm`` over (B*heads, S, d) views made by reshapes and
            transposes, GELU gates, residual adds, and back through
            ``reshape(B,H,W,C) -> permute(0,3,1,2)``.
    After:  ``x -> reshape(B,C,1,HW)`` (no copy); layer norms as mean/rsqrt over
            the channel axis; ``conv2d`` 1x1 for every projection; for each head
            ``softmax(k_h^T q_h, keys axis)`` and ``v_h @ w`` on channel slices,
            concatenated over channels (Apple's SPLIT_EINSUM); ``reshape(B,C,H,W)``
            out. A sequence from outside (cross-attention's text states) is
            transposed once into (B, C, 1, S) and shared by every block.
    Why: "Deploying Transformers on the Apple Neural Engine" (Apple, 2022) and
    ml-stable-diffusion: the ANE keeps 4-D channels-first tensors whose last axis
    is contiguous, so (B, S, C) sequences and the head reshapes cost copies, and
    per-head chunks keep each score tensor small enough for its caches.
    Exact up to float rounding (the same products; the norms sum in another order).
    Preconditions: ``unmask_attention`` has run (attention as bmm/softmax/bmm, no
    mask) and ``split_geglu_chunk`` (slices, not chunk); static shapes. A region
    with any op the rewrite does not know is left as it was.
    """

    name = "transformer_as_bc1s"
    group = "fusion"
    op_targets = (aten.permute.default, aten.transpose.int)

    @dataclass(frozen=True)
    class Config:
        components: tuple = ("unet",)  # component graphs to rewrite (the text encoder has no image regions)
        split_heads: bool = True  # one bmm pair per head (SPLIT_EINSUM); False: all heads in one batched bmm

    def run(self, state, config) -> PassResult:
        regions, heads = {}, {}
        for name, comp in state.model.components.items():
            gm = comp.graph
            if gm is None or name not in config.components:
                continue
            rewriter = _Rewriter(gm, config.split_heads)
            for entry in [n for n in gm.graph.nodes if _entry_source(n) is not None]:
                rewriter.try_region(entry)
            if rewriter.regions:
                gm.graph.eliminate_dead_code()
                gm.graph.lint()
                gm.recompile()
                refresh_meta(gm, comp.example_inputs)
                regions[name], heads[name] = rewriter.regions, rewriter.attention
        return PassResult(bool(regions), {"regions": regions, "attention": heads})


def _is(node, *targets) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == "call_function" and node.target in targets


def _entry_source(node):
    """The (B,C,H,W) node a (B,HW,C) sequence ``node`` is the flattened, channels-last view of, else None."""
    s = shape_of(node) if _is(node, *LAYOUT) else None
    if s is None or len(s) != 3:
        return None
    x = node.args[0]
    if _is(node, aten.view.default, aten.reshape.default) and _is(x, aten.permute.default) and list(x.args[1]) == [0, 2, 3, 1]:
        src = x.args[0]
    elif _is(node, aten.transpose.int) and sorted(node.args[1:3]) == [1, 2] and _is(x, aten.view.default, aten.reshape.default):
        src = x.args[0]
    else:
        return None
    xs = shape_of(src)
    return src if xs is not None and len(xs) == 4 and (xs[0], xs[2] * xs[3], xs[1]) == s and len(x.users) == 1 else None


def _exit_value(node):
    """The (B,HW,C) sequence whose reshape back to (B,C,H,W) ``node`` is, else None."""
    s = shape_of(node) if _is(node, *LAYOUT) else None
    if s is None or len(s) != 4:
        return None
    x = node.args[0]
    if _is(node, aten.permute.default) and list(node.args[1]) == [0, 3, 1, 2] and _is(x, aten.view.default, aten.reshape.default):
        v = x.args[0]
    elif _is(node, aten.view.default, aten.reshape.default) and _is(x, aten.transpose.int) and sorted(x.args[1:3]) == [1, 2]:
        v = x.args[0]
    else:
        return None
    vs = shape_of(v)
    return v if vs is not None and vs == (s[0], s[2] * s[3], s[1]) and len(x.users) == 1 else None


def _head_split_source(node, with_scale: bool):
    """For a (B*H, S, d) operand of the attention bmms: (its (B,S,C) source, H, scale, chain nodes), else None.

    The chain diffusers exports: ``view(B,S,H,d) -> transpose(1,2) [-> mul s] -> reshape(B*H,S,d)``.
    """
    if not _is(node, aten.reshape.default, aten.view.default, aten._unsafe_view.default):
        return None
    t, scale, chain = node.args[0], 1.0, [node]
    if with_scale and _is(t, aten.mul.Tensor) and isinstance(t.args[1], (int, float)):
        t, scale, chain = t.args[0], float(t.args[1]), [node, t]
    if not (_is(t, aten.transpose.int) and sorted(t.args[1:3]) == [1, 2] and _is(t.args[0], aten.view.default, aten.reshape.default)):
        return None
    src = t.args[0].args[0]
    ss, hs = shape_of(src), shape_of(t.args[0])
    if ss is None or hs is None or len(ss) != 3 or len(hs) != 4 or hs[:2] != ss[:2] or hs[2] * hs[3] != ss[2]:
        return None
    return src, hs[2], scale, [*chain, t, t.args[0]]


def _attention_core(out):
    """For the (B,S,C) output of a bmm/softmax/bmm attention: (q, k, v sources, heads, scale, chain nodes), else None."""
    if not _is(out, aten.reshape.default, aten.view.default, aten._unsafe_view.default):
        return None
    t = out.args[0]
    r = t.args[0] if _is(t, aten.transpose.int) and sorted(t.args[1:3]) == [1, 2] else None
    o = r.args[0] if _is(r, aten.reshape.default, aten.view.default) else None
    if not _is(o, aten.bmm.default) or not _is(o.args[0], aten.softmax.int) or arg(o.args[0], 1, "dim") not in (-1, 2):
        return None
    scores = o.args[0].args[0]
    kt = scores.args[1] if _is(scores, aten.bmm.default) else None
    if not (_is(kt, aten.transpose.int) and sorted(kt.args[1:3]) == [1, 2]):
        return None
    q, k, v = _head_split_source(scores.args[0], True), _head_split_source(kt.args[0], False), _head_split_source(o.args[1], False)
    if q is None or k is None or v is None or not q[1] == k[1] == v[1]:
        return None
    chain = [t, r, o, o.args[0], scores, kt, *q[3], *k[3], *v[3]]
    if any(len(n.users) != 1 for n in chain):
        return None
    return q[0], k[0], v[0], q[1], q[2], chain


class _Rewriter:
    """Rewrites one graph's regions, one at a time; a region it cannot rewrite whole is left untouched."""

    def __init__(self, gm: torch.fx.GraphModule, split_heads: bool):
        self.gm, self.g, self.split_heads = gm, gm.graph, split_heads
        self.outside = {}  # sequences from outside any region, in (B, C, 1, S): made once, shared by the regions
        self.regions = self.attention = 0

    def try_region(self, entry) -> None:
        self.new, self.memo, self.outside_new = [], {}, {}
        try:
            exits, attention = self._rewrite(entry)
        except NotInForm:
            for n in reversed(self.new):
                self.g.erase_node(n)
            return
        self.outside.update(self.outside_new)
        self.regions += 1
        self.attention += attention
        for old_out, new_out in exits:
            old_out.replace_all_uses_with(new_out)
        # Every user of a region node is a region node or an exit, so the region erases in reverse order.
        for n in reversed([n for n in self.g.nodes if n in self.region or n in dict(exits)]):
            self.g.erase_node(n)

    def _call(self, target, *args):
        n = self.g.call_function(target, args)
        self.new.append(n)
        return n

    def _region(self, entry):
        """The nodes fed by ``entry`` up to the exits, and the exits."""
        region, exits, todo = set(), [], [entry]
        while todo:
            n = todo.pop()
            if n in region:
                continue
            region.add(n)
            for u in n.users:
                end = next(iter(u.users), None) if len(u.users) == 1 else None
                if end is not None and _exit_value(end) is n:
                    region.add(u)
                    exits.append(end)
                else:
                    todo.append(u)
        return region, exits

    def _rewrite(self, entry):
        self.region, exits = self._region(entry)
        cores = {n: c for n in self.region if (c := _attention_core(n)) is not None}
        internal = {m for c in cores.values() for m in c[5]}
        exit_mids = {e.args[0] for e in exits}
        for n in [n for n in self.g.nodes if n in self.region]:
            if n in internal or n in exit_mids or _is(n, aten._assert_tensor_metadata.default):
                continue
            with self.g.inserting_before(n):
                if n is entry:
                    b, c, h, w = shape_of(_entry_source(n))
                    self.memo[n] = self._call(aten.reshape.default, _entry_source(n), [b, c, 1, h * w])
                elif n in cores:
                    self.memo[n] = self._attention(n, *cores[n][:5])
                else:
                    self.memo[n] = self._op(n)
                copy_module_meta(self.memo[n], n)
        out = []
        for e in exits:
            with self.g.inserting_before(e):
                out.append((e, self._call(aten.reshape.default, self._bc1s(e.args[0].args[0]), list(shape_of(e)))))
        return out, len(cores)

    def _bc1s(self, node):
        """``node``'s value in (B, C, 1, S): its rewritten node inside the region, converted once outside it."""
        if node in self.memo:
            return self.memo[node]
        if node in self.region:
            raise NotInForm(node)  # used before it was rewritten: not a form this pass knows
        if node not in self.outside and node not in self.outside_new:
            s = shape_of(node)
            if s is None or len(s) != 3:
                raise NotInForm(node)
            if _is(node, aten.linear.default):
                # Outside projections (cross-attention's K and V) become 1x1 convs too, on the shared transposed input.
                with self.g.inserting_before(node):
                    self.outside_new[node] = self._op(node)
            else:
                with self.g.inserting_before(_first_user(node) if node.op == "placeholder" else node.next):
                    t = self._call(aten.transpose.int, node, 1, 2)
                    self.outside_new[node] = self._call(aten.reshape.default, t, [s[0], s[2], 1, s[1]])
        return self.outside.get(node) or self.outside_new[node]

    def _op(self, n):
        """The (B, C, 1, S) form of one region op."""
        x = n.args[0]
        xs = self._bc1s(x)
        if _is(n, aten.linear.default):
            w = n.args[1]
            cout, cin = shape_of(w)
            bias = arg(n, 2, "bias")
            # The weight reshaped in the graph, not copied: Core ML's converter folds it into the constant.
            return self._call(aten.conv2d.default, xs, self._call(aten.reshape.default, w, [cout, cin, 1, 1]), bias)
        if _is(n, aten.layer_norm.default) and len(n.args[1]) == 1:
            return self._channel_norm(xs, arg(n, 2, "weight"), arg(n, 3, "bias"), arg(n, 4, "eps", 1e-5))
        if _is(n, *POINTWISE):
            return self._call(n.target, xs, *n.args[1:])
        if _is(n, *BINARY) and not n.kwargs:
            other = n.args[1]
            if isinstance(other, torch.fx.Node):
                other = self._bc1s(other)
            elif not isinstance(other, (int, float)):
                raise NotInForm(n)
            return self._call(n.target, xs, other)
        if _is(n, aten.slice.Tensor) and n.args[1] in (-1, 2):
            return self._call(aten.slice.Tensor, xs, 1, *n.args[2:])
        raise NotInForm(n)

    def _channel_norm(self, x, weight, bias, eps):
        """LayerNorm over the channel axis of (B, C, 1, S) (Apple's LayerNormANE): mean, centred variance, rsqrt."""
        mean = self._call(aten.mean.dim, x, [1], True)
        d = self._call(aten.sub.Tensor, x, mean)
        var = self._call(aten.mean.dim, self._call(aten.mul.Tensor, d, d), [1], True)
        y = self._call(aten.mul.Tensor, d, self._call(aten.rsqrt.default, self._call(aten.add.Tensor, var, eps)))
        for op, p in ((aten.mul.Tensor, weight), (aten.add.Tensor, bias)):
            if p is not None:
                y = self._call(op, y, self._call(aten.reshape.default, p, [1, -1, 1, 1]))
        return y

    def _attention(self, out, q, k, v, heads, scale):
        """softmax(q k^T) v on (B, C, 1, S) values: scores as (B, S_k, S_q), softmax over the keys axis."""
        qs, ks, vs = self._bc1s(q), self._bc1s(k), self._bc1s(v)
        (b, sq, c), sk, cv = shape_of(q), shape_of(k)[1], shape_of(v)[2]
        if scale != 1.0:
            qs = self._call(aten.mul.Tensor, qs, scale)
        if not self.split_heads:
            return self._head(qs, ks, vs, b * heads, c // heads, cv // heads, sq, sk, [b, cv, 1, sq])
        d, dv = c // heads, cv // heads
        outs = [self._head(self._call(aten.slice.Tensor, qs, 1, h * d, (h + 1) * d),
                           self._call(aten.slice.Tensor, ks, 1, h * d, (h + 1) * d),
                           self._call(aten.slice.Tensor, vs, 1, h * dv, (h + 1) * dv), b, d, dv, sq, sk, [b, dv, 1, sq])
                for h in range(heads)]
        return self._call(aten.cat.default, outs, 1)

    def _head(self, q, k, v, n, d, dv, sq, sk, out_shape):
        q3 = self._call(aten.reshape.default, q, [n, d, sq])
        k3 = self._call(aten.reshape.default, k, [n, d, sk])
        v3 = self._call(aten.reshape.default, v, [n, dv, sk])
        w = self._call(aten.softmax.int, self._call(aten.bmm.default, self._call(aten.transpose.int, k3, 1, 2), q3), 1)
        return self._call(aten.reshape.default, self._call(aten.bmm.default, v3, w), out_shape)


def _first_user(node):
    return min(node.users, key=lambda u: list(node.graph.nodes).index(u))
