"""FusedAdam is bitwise torch.optim.Adam(fused=True): parameters, state, hooks, schedulers."""

import importlib
import io

import pytest
import torch
from torch.optim.lr_scheduler import StepLR
from torch.optim.optimizer import register_optimizer_step_pre_hook

from pyro_vae.errors import InputError
from pyro_vae.train import fused_adam
from pyro_vae.train.fused_adam import FusedAdam


def _params(seed=0, dtype=torch.float32, shapes=((5, 3), (3,), (2, 4))):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def _copy(params):
    return [p.detach().clone().requires_grad_() for p in params]


def _run(opt, params, grads_seq, *, skip=()):
    """Steps with the gradients of grads_seq; parameters in ``skip`` get no gradient."""
    for grads in grads_seq:
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            p.grad = None if i in skip else g.clone()
        opt.step()
        opt.zero_grad()


def _grads(params, steps=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params] for _ in range(steps)]


def _assert_same(opt_a, params_a, opt_b, params_b):
    for p, q in zip(params_a, params_b, strict=True):
        assert torch.equal(p, q)
        sa, sb = opt_a.state[p], opt_b.state[q]
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "options",
    [{}, {"amsgrad": True}, {"weight_decay": 0.1}, {"maximize": True}, {"betas": (0.5, 0.9), "eps": 1e-3}],
)
def test_bitwise_torch_fused_adam(dtype, options):
    ours = _params(dtype=dtype)
    ref = _copy(ours)
    opt = FusedAdam(ours, lr=0.05, **options)
    opt_ref = torch.optim.Adam(ref, lr=0.05, fused=True, **options)
    grads = _grads(ours)
    _run(opt, ours, grads)
    _run(opt_ref, ref, grads)
    _assert_same(opt, ours, opt_ref, ref)


def test_the_lean_step_runs_after_the_first(monkeypatch):
    """The general step initializes the state once; then every step is the lean one."""
    params = _params()
    opt = FusedAdam(params, lr=0.05)
    general = []
    real = fused_adam._ADAM_STEP
    monkeypatch.setattr(fused_adam, "_ADAM_STEP", lambda *a: general.append(1) or real(*a))
    _run(opt, params, _grads(params, steps=5))
    assert len(general) == 1


def test_training_with_it_never_imports_torchdynamo():
    """Optimizer's constructor, ``state_dict``, ``load_state_dict`` and Adam's step are wrapped
    to be skipped by TorchDynamo, and the wrappers import it at their first call (0.5-0.7 s
    a process). FusedAdam calls the methods as written: a fresh process that builds one,
    steps it (the general step first, then the lean one), saves and loads its state has not
    imported TorchDynamo, and its parameters are then those of torch.optim.Adam(fused=True),
    which does import it."""
    import subprocess
    import sys

    code = """
import sys, torch
from pyro_vae.train.fused_adam import FusedAdam
if "torch._dynamo" in sys.modules:  # this PyTorch imports it by itself: nothing to tell
    print("imported by torch"); sys.exit(0)

def run(opt_class, **options):
    p = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)).requires_grad_()
    opt = opt_class([p], lr=0.1, **options)
    for step in range(3):
        p.grad = torch.full((4, 3), float(step + 1))
        opt.step()
        opt.zero_grad()
    opt.load_state_dict(opt.state_dict())
    return p

ours = run(FusedAdam)
print("torch._dynamo" in sys.modules)
reference = run(torch.optim.Adam, fused=True)
print(torch.equal(ours, reference), "torch._dynamo" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    if out.stdout.strip() == "imported by torch":
        pytest.skip("this PyTorch imports TorchDynamo by itself")
    assert out.stdout.split() == ["False", "True", "True"]


def test_groups_missing_gradients_and_a_scheduler():
    """Two groups with their own learning rates, a parameter without a gradient in some steps,
    a parameter added later, and a learning-rate schedule: bitwise as torch's fused Adam."""
    ours, ref = _params(), None
    ref = _copy(ours)
    late, late_ref = _params(seed=3, shapes=((4,),))[0], None
    late_ref = late.detach().clone().requires_grad_()
    opt = FusedAdam([{"params": ours[:2]}, {"params": ours[2:], "lr": 0.01}], lr=0.05)
    opt_ref = torch.optim.Adam([{"params": ref[:2]}, {"params": ref[2:], "lr": 0.01}], lr=0.05, fused=True)
    sched, sched_ref = StepLR(opt, step_size=2, gamma=0.5), StepLR(opt_ref, step_size=2, gamma=0.5)
    grads = _grads(ours)
    for i, step_grads in enumerate(grads):
        if i == 4:
            opt.add_param_group({"params": [late]})
            opt_ref.add_param_group({"params": [late_ref]})
        for params, opt_, sched_ in ((ours, opt, sched), (ref, opt_ref, sched_ref)):
            for j, (p, g) in enumerate(zip(params, step_grads, strict=True)):
                p.grad = None if (j == 1 and i % 3 == 0) else g.clone()
            extra = late if params is ours else late_ref
            if i >= 4:
                extra.grad = torch.full_like(extra, float(i))
            opt_.step()
            opt_.zero_grad()
            sched_.step()
    _assert_same(opt, [*ours, late], opt_ref, [*ref, late_ref])
    assert opt.param_groups[0]["lr"] == opt_ref.param_groups[0]["lr"]


def test_state_dict_loads_either_way():
    """Checkpoints move between FusedAdam and torch.optim.Adam in both directions."""
    ours = _params()
    ref = _copy(ours)
    opt, opt_ref = FusedAdam(ours, lr=0.05), torch.optim.Adam(ref, lr=0.05, fused=True)
    grads = _grads(ours, steps=6)
    _run(opt, ours, grads[:3])
    _run(opt_ref, ref, grads[:3])
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    swapped_ref = torch.optim.Adam(ref, lr=0.05, fused=True)
    swapped_ref.load_state_dict(torch.load(buffer))
    swapped = FusedAdam(ours, lr=0.05)
    swapped.load_state_dict(opt_ref.state_dict())
    _run(swapped, ours, grads[3:])
    _run(swapped_ref, ref, grads[3:])
    _assert_same(swapped, ours, swapped_ref, ref)


@pytest.mark.parametrize("reload", [False, True])
def test_hooks_run_once_and_the_profiler_sees_the_step(reload):
    """Hooks run once a step, the first (general) step included, also when a plain Adam had
    patched ``Adam.step`` with its hook wrapper before this module was imported."""
    params = _params()
    torch.optim.Adam(_copy(params), lr=0.05)  # patches Adam.step with the hook wrapper
    cls = importlib.reload(fused_adam).FusedAdam if reload else FusedAdam
    opt = cls(params, lr=0.05)
    calls = []
    pre = opt.register_step_pre_hook(lambda *a: calls.append("pre"))
    post = opt.register_step_post_hook(lambda *a: calls.append("post"))
    glob = register_optimizer_step_pre_hook(lambda *a: calls.append("global"))
    try:
        _run(opt, params, _grads(params, steps=3))
    finally:
        pre.remove(), post.remove(), glob.remove()
    assert calls == ["global", "pre", "post"] * 3
    _run(opt, params, _grads(params, steps=1))
    assert len(calls) == 9
    with torch.profiler.profile() as prof:
        _run(opt, params, _grads(params, steps=1))
    assert any(e.name == "Optimizer.step#FusedAdam.step" for e in prof.events())


def test_closure_and_fallbacks_equal_torch():
    """A closure and a group mixing dtypes take the general step, with torch's results."""
    ours = _params() + _params(seed=2, dtype=torch.float64, shapes=((3,),))
    ref = _copy(ours)
    opt = FusedAdam(ours, lr=0.05)
    opt_ref = torch.optim.Adam(ref, lr=0.05, fused=True)
    grads = _grads(ours, steps=4)
    _run(opt, ours, grads)
    _run(opt_ref, ref, grads)
    _assert_same(opt, ours, opt_ref, ref)

    def closure(params):
        def f():
            loss = sum((p**2).sum() for p in params)
            loss.backward()
            return loss

        return f

    losses = []
    for params, o in ((ours, opt), (ref, opt_ref)):
        o.zero_grad()
        losses.append(o.step(closure(params)))
    assert torch.equal(losses[0], losses[1])
    _assert_same(opt, ours, opt_ref, ref)


def test_a_tensor_learning_rate_takes_the_general_step():
    ours = _params()
    ref = _copy(ours)
    opt = FusedAdam(ours, lr=torch.tensor(0.05))
    opt_ref = torch.optim.Adam(ref, lr=torch.tensor(0.05), fused=True)
    grads = _grads(ours, steps=4)
    _run(opt, ours, grads)
    _run(opt_ref, ref, grads)
    _assert_same(opt, ours, opt_ref, ref)


def test_zero_grad_keeps_or_drops_like_torch():
    params = _params()
    opt = FusedAdam(params, lr=0.05)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.zero_grad(set_to_none=False)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in params)
    opt.zero_grad()
    assert all(p.grad is None for p in params)


def _hook_record(opt, seen):
    return opt.register_step_pre_hook(lambda o, a, k: seen.append((len(a), sorted(k))))


def test_hooks_see_the_callers_arguments_and_may_change_them():
    """As for torch's optimizers: a pre-hook sees ``(self, *args)`` and the keywords as
    called, and what it returns is what the step gets (here, a closure it adds)."""
    seen = {}
    for cls in (FusedAdam, lambda p, **kw: torch.optim.Adam(p, fused=True, **kw)):
        params = _params()
        opt = cls(params, lr=0.05)
        calls = seen.setdefault(cls, [])
        handle = _hook_record(opt, calls)

        def closure(params=params):
            loss = sum((p**2).sum() for p in params)
            loss.backward()
            return loss

        opt.zero_grad()
        opt.step(closure)
        opt.zero_grad()
        opt.step(closure=closure)
        handle.remove()
        opt.register_step_pre_hook(lambda o, a, k: (a, {"closure": closure}))
        opt.zero_grad()
        assert opt.step() is not None  # the hook's closure ran
    ours, torchs = seen.values()
    assert ours == torchs == [(2, []), (1, ["closure"])]


def test_a_subclass_overriding_step_runs_the_hooks_once():
    class Sub(FusedAdam):
        def step(self, closure=None):
            return super().step(closure)

    params = _params()
    opt = Sub(params, lr=0.05)
    calls = []
    opt.register_step_pre_hook(lambda *a: calls.append("pre"))
    opt.register_step_post_hook(lambda *a: calls.append("post"))
    _run(opt, params, _grads(params, steps=3))
    assert calls == ["pre", "post"] * 3
    ref = _copy(_params())
    _run(torch.optim.Adam(ref, lr=0.05, fused=True), ref, _grads(ref, steps=3))
    assert all(torch.equal(p, q) for p, q in zip(params, ref, strict=True))


def test_state_the_step_refuses_fails_as_in_torch():
    """A group turned to amsgrad mid-run has no ``max_exp_avg_sq``: torch steps the groups
    before it, then raises; so does FusedAdam."""
    states = []
    for cls in (FusedAdam, lambda g, **kw: torch.optim.Adam(g, fused=True, **kw)):
        a, b = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
        opt = cls([{"params": [a]}, {"params": [b]}], lr=0.1)
        a.grad, b.grad = torch.ones(3), torch.ones(3)
        opt.step()
        opt.param_groups[1]["amsgrad"] = True
        with pytest.raises(KeyError, match="max_exp_avg_sq"):
            opt.step()
        states.append((a.detach().clone(), opt.state[a]["step"].clone()))
    assert torch.equal(states[0][0], states[1][0]) and torch.equal(states[0][1], states[1][1])
    assert states[0][1].item() == 2


def test_constructor_takes_adams_arguments():
    params = _params()
    opt = FusedAdam(params, 0.05, (0.8, 0.99))
    assert opt.defaults["lr"] == 0.05 and opt.defaults["betas"] == (0.8, 0.99)
    rebuilt = type(opt)(_copy(params), **opt.defaults)
    assert rebuilt.defaults == opt.defaults
    assert opt.defaults == torch.optim.Adam(_copy(params), 0.05, (0.8, 0.99), fused=True).defaults
    with pytest.raises(InputError, match="fused=True"):
        FusedAdam(params, fused=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("options", [{}, {"amsgrad": True, "weight_decay": 0.1}])
def test_bitwise_torch_fused_adam_on_cuda(options):
    ours = [p.detach().cuda().requires_grad_() for p in _params()]
    ref = _copy(ours)
    opt = FusedAdam(ours, lr=0.05, **options)
    opt_ref = torch.optim.Adam(ref, lr=0.05, fused=True, **options)
    grads = [[g.cuda() for g in step] for step in _grads(ours)]
    _run(opt, ours, grads)
    _run(opt_ref, ref, grads)
    _assert_same(opt, ours, opt_ref, ref)
    assert all(opt.state[p]["step"].is_cuda for p in ours)
