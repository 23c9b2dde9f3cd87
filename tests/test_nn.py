"""fastnn.nn: every layer's backward against central finite differences in float64 (the random
masks of dropout and DropConnect fixed by re-seeding fastnn's default generator before every
forward), the module contract (parameters and their names, train / eval, state_dict), the init
schemes of Linear checked statistically, argument errors, float32 and float64 models.

Finite differences: h = 1e-6 in float64, so the central difference is within ~1e-9 of the
derivative (truncation h^2 |f'''| plus rounding eps |f| / h); the tolerance 1e-7 + 1e-6 |g|
leaves room for that and is still far below any wrong-formula error. Inputs are standard normal,
so a relu-like kink within h of a pre-activation is a ~1e-5 event per element: the inputs are
seeded per test (conftest.rng), so such a test fails on every run, never intermittently."""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref

import fastnn
import fastnn.functional as F
from fastnn import nn

ACTS = F.ACTIVATIONS
H = 1e-6


# ---- finite differences ----------------------------------------------------------------------------

def _numeric_grad(value, arr):
    """d value() / d arr, central differences, perturbing arr in place (restored)."""
    out = np.zeros(arr.shape)
    flat = arr.reshape(-1)  # a view: arr is C-contiguous
    assert np.shares_memory(flat, arr)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + H
        fp = value()
        flat[i] = old - H
        fm = value()
        flat[i] = old
        out.reshape(-1)[i] = (fp - fm) / (2 * H)
    return out


def _assert_grad(analytic, numeric, what):
    assert analytic is not None, f"{what}: no gradient"
    analytic = np.asarray(analytic, np.float64)
    assert analytic.shape == numeric.shape, f"{what}: shape {analytic.shape}, expected {numeric.shape}"
    err = np.abs(analytic - numeric)
    tol = 1e-7 + 1e-6 * np.abs(numeric)
    bad = ~(err <= tol)
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {err.size} elements differ from finite differences; "
                           f"worst {analytic.reshape(-1)[np.argmax(err)]!r} vs {numeric.reshape(-1)[np.argmax(err)]!r}")


def check_module_gradients(module, x, rng, *, seed=1234, check_params=True):
    """backward(g) of `module` (float64, training mode) against finite differences of
    sum(g * module(x)) with respect to x and every parameter; fastnn.manual_seed(seed) before
    every forward, so that each evaluation draws the same dropout / DropConnect masks."""
    module.train()
    x = np.ascontiguousarray(x, np.float64)

    def forward(xv):
        fastnn.manual_seed(seed)
        return module.forward(xv)

    y = forward(x)
    g = rng.standard_normal(np.shape(y))
    gx = module.backward(g)
    grads = {name: p.grad.copy() for name, p in module.named_parameters()}

    def value():
        return float(np.sum(g * forward(x)))

    _assert_grad(gx, _numeric_grad(value, x), f"{module!r}: grad_input")
    if check_params:
        for name, p in module.named_parameters():
            _assert_grad(grads[name], _numeric_grad(value, p.data), f"{module!r}: grad of {name}")
    return y, gx


def check_loss_gradients(model, loss_fn, x, target, *, seed=99):
    """The gradient of loss_fn(model(x), target) flowing through model.backward, against finite
    differences of the loss value, for every parameter and the input."""
    model.train()
    x = np.ascontiguousarray(x, np.float64)

    def value():
        fastnn.manual_seed(seed)
        return loss_fn(model(x), target)

    loss = value()
    assert np.isfinite(loss)
    gx = model.backward(loss_fn.backward())
    grads = {name: p.grad.copy() for name, p in model.named_parameters()}
    _assert_grad(gx, _numeric_grad(value, x), f"{type(loss_fn).__name__}: grad_input")
    for name, p in model.named_parameters():
        _assert_grad(grads[name], _numeric_grad(value, p.data), f"{type(loss_fn).__name__}: grad of {name}")


def _linear64(*args, **kw):
    kw.setdefault("dtype", np.float64)
    return nn.Linear(*args, **kw)


def _perturb_params(module, rng, scale=0.3):
    """Moves every parameter away from its init (zero biases, equal PReLU slopes would let a
    wrong gradient formula pass)."""
    for _, p in module.named_parameters():
        p.data += scale * rng.standard_normal(p.shape)


# ---- gradients of every layer ----------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("activation", ACTS, ids=str)
def test_linear_gradients(rng, activation, bias):
    layer = _linear64(5, 4, bias=bias, activation=activation, prelu_per_output=True, negative_slope=0.2,
                      alpha=0.7)
    _perturb_params(layer, rng)
    check_module_gradients(layer, rng.standard_normal((6, 5)), rng)


@pytest.mark.parametrize("dropout,dropconnect", [(0.4, 0.0), (0.0, 0.3), (0.3, 0.5)])
@pytest.mark.parametrize("activation", ACTS, ids=str)
def test_linear_gradients_dropout_dropconnect(rng, activation, dropout, dropconnect):
    layer = _linear64(6, 5, activation=activation, dropout=dropout, dropconnect=dropconnect)
    _perturb_params(layer, rng)
    y, _ = check_module_gradients(layer, rng.standard_normal((7, 6)), rng)
    if dropout:
        assert (y == 0).any(), "dropout dropped nothing: the check did not exercise the mask"


def test_linear_masks_are_fresh_each_forward(rng):
    """Linear draws new positions from the default generator at each training forward (so the
    re-seeding above is what makes a finite-difference check possible)."""
    layer = _linear64(20, 30, dropout=0.5)
    x = rng.standard_normal((8, 20))
    fastnn.manual_seed(3)
    y1 = layer(x)
    y2 = layer(x)
    assert not np.array_equal(y1 == 0, y2 == 0)
    fastnn.manual_seed(3)
    np.testing.assert_array_equal(layer(x), y1)


def test_linear_nd_input(rng):
    layer = _linear64(5, 3, activation="tanh")
    _perturb_params(layer, rng)
    y, gx = check_module_gradients(layer, rng.standard_normal((2, 3, 5)), rng)
    assert y.shape == (2, 3, 3) and gx.shape == (2, 3, 5)


@pytest.mark.parametrize("activation", ACTS, ids=str)
def test_linear_forward_passes_its_arguments(rng, activation):
    """negative_slope, alpha and the PReLU weight reach the kernel (forward and backward)."""
    layer = _linear64(7, 6, activation=activation, negative_slope=0.3, alpha=0.6, prelu_per_output=True)
    _perturb_params(layer, rng)
    x = rng.standard_normal((5, 7))
    z = x @ layer.weight.data.T + layer.bias.data
    pw = None if layer.prelu_weight is None else layer.prelu_weight.data
    expect = ref.activation(activation, z, negative_slope=0.3, alpha=0.6, prelu_weight=pw)
    np.testing.assert_allclose(layer(x), expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("module_cls", [nn.Sigmoid, nn.Tanh, nn.ReLU, nn.SELU])
def test_activation_module_gradients(rng, module_cls):
    check_module_gradients(module_cls(), rng.standard_normal((4, 5)) * 2, rng)


@pytest.mark.parametrize("slope", [0.01, 0.3])
def test_leaky_relu_gradients(rng, slope):
    m = nn.LeakyReLU(slope)
    y, _ = check_module_gradients(m, rng.standard_normal((4, 5)), rng)
    assert m.negative_slope == slope


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_elu_gradients(rng, alpha):
    check_module_gradients(nn.ELU(alpha), rng.standard_normal((4, 5)) * 2, rng)


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5)], ids=["NC", "NCL"])
@pytest.mark.parametrize("num_parameters", [1, 3])
def test_prelu_gradients(rng, num_parameters, shape):
    m = nn.PReLU(num_parameters, dtype=np.float64)
    m.weight.data[:] = rng.uniform(0.05, 0.6, num_parameters)  # distinct slopes per channel
    check_module_gradients(m, rng.standard_normal(shape), rng)
    assert m.weight.grad.shape == (num_parameters,)


def test_activation_modules_forward(rng):
    x = rng.standard_normal((5, 4)) * 3
    pw = np.array([0.1, 0.2, 0.3, 0.4])
    prelu = nn.PReLU(4, dtype=np.float64)
    prelu.weight.data[:] = pw
    cases = [(nn.Sigmoid(), ref.sigmoid(x)), (nn.Tanh(), np.tanh(x)), (nn.ReLU(), np.maximum(x, 0)),
             (nn.LeakyReLU(0.2), ref.leaky_relu(x, 0.2)), (nn.ELU(0.5), ref.elu(x, 0.5)),
             (nn.SELU(), ref.selu(x)), (prelu, ref.prelu(x, pw))]
    for m, expect in cases:
        np.testing.assert_allclose(m(x), expect, rtol=1e-13, atol=1e-14, err_msg=repr(m))


@pytest.mark.parametrize("p", [0.0, 0.3, 0.7])
def test_dropout_gradients(rng, p):
    m = nn.Dropout(p)
    y, gx = check_module_gradients(m, rng.standard_normal((6, 7)), rng)
    if p:
        assert (y == 0).any() and (y != 0).any()
        np.testing.assert_array_equal(gx == 0, y == 0)


def test_sequential_gradients(rng):
    model = nn.Sequential(_linear64(5, 6, activation="tanh", dropout=0.2), nn.Dropout(0.3),
                          _linear64(6, 6), nn.PReLU(6, dtype=np.float64), nn.ELU(0.8),
                          _linear64(6, 4, activation="leaky_relu", dropconnect=0.2), nn.Sigmoid(),
                          _linear64(4, 3, bias=False))
    _perturb_params(model, rng)
    check_module_gradients(model, rng.standard_normal((5, 5)), rng)


@pytest.mark.parametrize("zero_init_last", [False, True])
def test_residual_gradients(rng, zero_init_last):
    block = nn.Sequential(_linear64(4, 6, activation="relu"), _linear64(6, 4, activation="tanh"))
    model = nn.Residual(block, zero_init_last=zero_init_last)
    _perturb_params(model, rng)
    check_module_gradients(model, rng.standard_normal((5, 4)), rng)
    nested = nn.Sequential(_linear64(3, 4, activation="selu"), nn.Residual(_linear64(4, 4, activation="elu"),
                                                                           zero_init_last=False),
                           _linear64(4, 2))
    _perturb_params(nested, rng)
    check_module_gradients(nested, rng.standard_normal((5, 3)), rng)


@pytest.mark.parametrize("activation", ["relu", "tanh", "selu", None])
def test_residual_zero_init_last_is_identity(rng, activation):
    """zero_init_last zeroes the last Linear of the branch: F(x) = 0 exactly at init, so
    y = F(x) + x = x and Var(y) = Var(x), however many blocks are stacked."""
    d = 16
    blocks = [nn.Residual(nn.Sequential(nn.Linear(d, 32, activation="relu"), nn.Linear(32, d, activation=activation)))
              for _ in range(8)]
    model = nn.Sequential(*blocks)
    x = rng.standard_normal((256, d)).astype(np.float32)
    assert not np.any(blocks[0].block(x))
    y = model(x)
    np.testing.assert_array_equal(y, x)
    assert np.var(y) == np.var(x)
    # without it each block adds its branch's variance: the stack's output variance grows
    grown = nn.Sequential(*[nn.Residual(nn.Sequential(nn.Linear(d, 32, activation="relu"), nn.Linear(32, d)),
                                        zero_init_last=False) for _ in range(8)])
    assert np.var(grown(x)) > 2 * np.var(x)


def test_residual_zero_init_last_errors():
    with pytest.raises(ValueError, match="block: zero_init_last=True needs a Linear"):
        nn.Residual(nn.ReLU())
    with pytest.raises(TypeError, match="block: expected a fastnn.nn.Module, got function"):
        nn.Residual(lambda x: x)
    # a sigmoid maps the zeroed layer's 0 to 0.5, not 0: the branch would not start at zero
    with pytest.raises(ValueError, match="zero_init_last"):
        nn.Residual(nn.Linear(4, 4, activation="sigmoid"))
    nn.Residual(nn.Linear(4, 4, activation="sigmoid"), zero_init_last=False)
    # a block that changes the width: x + block(x) failed with NumPy's broadcast error (or, for a
    # 1-wide output, broadcast silently)
    x = np.ones((5, 3), np.float32)
    for out in (4, 1):
        r = nn.Residual(nn.Linear(3, out), zero_init_last=False)
        with pytest.raises(ValueError, match=rf"block: a residual block must keep its input's shape, but it maps "
                                             rf"\(5, 3\) to \(5, {out}\)"):
            r(x)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_softmax_cross_entropy_through_model(rng, dropout):
    model = nn.Sequential(_linear64(6, 8, activation="relu", dropout=dropout), _linear64(8, 8, activation="tanh"),
                          _linear64(8, 4))
    _perturb_params(model, rng)
    check_loss_gradients(model, nn.SoftmaxCrossEntropy(), rng.standard_normal((5, 6)), rng.integers(0, 4, 5))


def test_softmax_cross_entropy_soft_targets_through_model(rng):
    model = nn.Sequential(_linear64(6, 5, activation="sigmoid"), _linear64(5, 3))
    _perturb_params(model, rng)
    t = rng.dirichlet(np.ones(3), 4)
    check_loss_gradients(model, nn.SoftmaxCrossEntropy(), rng.standard_normal((4, 6)), t)


def test_mse_through_model(rng):
    model = nn.Sequential(_linear64(4, 7, activation="elu", dropconnect=0.2), nn.Dropout(0.2), _linear64(7, 2))
    _perturb_params(model, rng)
    check_loss_gradients(model, nn.MSELoss(), rng.standard_normal((6, 4)), rng.standard_normal((6, 2)))


# ---- parameters, modes, state --------------------------------------------------------------------

def _zoo():
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 5, bias=False), nn.PReLU(5),
                         nn.Linear(5, 2, activation="prelu", prelu_per_output=True),
                         nn.Residual(nn.Sequential(nn.Linear(2, 2, activation="tanh"), nn.Linear(2, 2))),
                         nn.Dropout(0.5))


def test_named_parameters_order_and_names():
    model = _zoo()
    names = [n for n, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "2.weight", "3.weight", "4.weight", "4.bias", "4.prelu_weight",
                     "5.block.0.weight", "5.block.0.bias", "5.block.1.weight", "5.block.1.bias"]
    params = model.parameters()
    assert [p for _, p in model.named_parameters()] == params
    assert params[0] is model[0].weight and params[-1] is model[5].block[1].bias
    assert [p.shape for p in params[:7]] == [(4, 3), (4,), (5, 4), (5,), (2, 5), (2,), (2,)]
    # weights are regularized, biases and PReLU slopes are not (fastnn.optim applies weight decay)
    assert [p.regularize for p in params[:7]] == [True, False, True, False, True, False, False]
    assert nn.Linear(3, 4, activation="prelu").prelu_weight.shape == (1,)


def test_parameters_lists_a_shared_parameter_once(rng):
    # A module kept under two attributes (a common alias: self.head = self.body[-1]) or a layer
    # used twice: torch.nn.Module.parameters() yields each Parameter once, so an optimizer built
    # on it steps it once; fastnn listed it twice and SGD moved it by 2 * lr * grad.
    class Net(nn.Module):
        def __init__(self):
            self.body = nn.Sequential(nn.Linear(3, 4, activation="relu"), nn.Linear(4, 2))
            self.head = self.body[1]

        def forward(self, x):
            return self.body(x)

        def backward(self, g, *, need_input_grad=True):
            return self.body.backward(g, need_input_grad=need_input_grad)

    net = Net()
    assert [n for n, _ in net.named_parameters()] == ["body.0.weight", "body.0.bias", "body.1.weight",
                                                      "body.1.bias", "head.weight", "head.bias"]
    assert net.parameters() == [net.body[0].weight, net.body[0].bias, net.body[1].weight, net.body[1].bias]
    layer = nn.Linear(3, 3)
    assert nn.Sequential(layer, nn.Tanh(), layer).parameters() == [layer.weight, layer.bias]
    opt = fastnn.optim.SGD(net.parameters(), lr=0.5)
    x = rng.standard_normal((5, 3)).astype(np.float32)
    y = net(x)
    net.backward(np.ones_like(y), need_input_grad=False)
    w0, g = net.head.weight.data.copy(), net.head.weight.grad.copy()
    opt.step()
    np.testing.assert_array_equal(net.head.weight.data, w0 - np.float32(0.5) * g)


def test_sequential_slice_is_a_sequential(rng):
    # torch.nn.Sequential's model[:-1] (the body, for features) is a Sequential sharing the layers;
    # fastnn returned a list, which cannot be called
    model = nn.Sequential(nn.Linear(3, 4, activation="relu"), nn.Linear(4, 5, activation="tanh"), nn.Linear(5, 2))
    body = model[:-1]
    assert isinstance(body, nn.Sequential) and body.layers == model.layers[:2]
    assert body.layers is not model.layers
    assert body[0] is model[0] and model[-1] is model.layers[2]
    assert isinstance(model[1:], nn.Sequential) and len(model[::2]) == 2 and len(model[3:]) == 0
    x = rng.standard_normal((6, 3)).astype(np.float32)
    model.eval()
    np.testing.assert_array_equal(model[-1](body.eval()(x)), model(x))


def test_train_eval_modes(rng):
    model = _zoo()
    assert model.training and all(m.training for m in _walk(model))
    assert model.eval() is model
    assert not any(m.training for m in _walk(model))
    assert model.train() is model and all(m.training for m in _walk(model))
    model.train(False)
    assert not model[5].block[0].training
    with pytest.raises(TypeError, match="mode: expected a bool, got int"):
        model.train(1)


def _walk(m):
    yield m
    for c in m.children():
        yield from _walk(c)


def test_eval_no_dropout_no_state(rng):
    model = nn.Sequential(nn.Linear(10, 20, activation="relu", dropout=0.5, dropconnect=0.5), nn.Dropout(0.5),
                          nn.Tanh(), nn.PReLU(20), nn.Linear(20, 3))
    x = rng.standard_normal((16, 10)).astype(np.float32)
    model.eval()
    y1, y2 = model(x), model(x)
    np.testing.assert_array_equal(y1, y2)  # deterministic: no masks
    w0 = model[0]
    expect = np.tanh(np.maximum(x @ w0.weight.data.T + w0.bias.data, 0))
    expect = np.where(expect > 0, expect, 0.25 * expect) @ model[4].weight.data.T
    np.testing.assert_allclose(y1, expect, rtol=1e-5, atol=1e-5)
    assert w0._saved is None and w0._x is None and model[1]._rng is None and model[2]._x is None
    for m in model:
        with pytest.raises(RuntimeError, match="backward: call forward in training mode first"):
            m.backward(np.ones((16, 20), np.float32))
    with pytest.raises(RuntimeError, match="in training mode first"):
        model.backward(np.ones_like(y1))
    model.train()
    fastnn.manual_seed(0)
    assert not np.array_equal(model(x), y1)  # the masks are back
    model.backward(np.ones_like(y1))


def test_backward_twice_without_forward_raises(rng):
    layer = nn.Linear(4, 3)
    layer(rng.standard_normal((2, 4)).astype(np.float32))
    layer.backward(np.ones((2, 3), np.float32))
    with pytest.raises(RuntimeError, match="Linear.backward: call forward in training mode first"):
        layer.backward(np.ones((2, 3), np.float32))


def test_backward_replaces_grads(rng):
    layer = nn.Linear(4, 3)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    g = np.ones((2, 3), np.float32)
    layer(x)
    layer.backward(g)
    first = layer.weight.grad.copy()
    layer(x)
    layer.backward(g)
    np.testing.assert_array_equal(layer.weight.grad, first)  # replaced, not accumulated
    layer.zero_grad()
    assert not layer.weight.grad.any() and not layer.bias.grad.any()


def test_state_dict_round_trip(rng):
    fastnn.manual_seed(1)
    a = _zoo()
    fastnn.manual_seed(2)
    b = _zoo()
    x = rng.standard_normal((5, 3)).astype(np.float32)
    a.eval()
    b.eval()
    assert not np.array_equal(a(x), b(x))
    sd = a.state_dict()
    assert list(sd) == [n for n, _ in a.named_parameters()]
    assert b.load_state_dict(sd) is b
    np.testing.assert_array_equal(a(x), b(x))
    # copies both ways: changing the dict or the source model later changes nothing
    sd["0.weight"][...] = 7
    a[0].weight.data[...] = 9
    assert not np.any(b[0].weight.data == 7) and not np.any(b[0].weight.data == 9)
    assert b.state_dict()["0.weight"] is not b[0].weight.data


def test_load_state_dict_errors(rng):
    model = _zoo()
    good = model.state_dict()
    before = {k: v.copy() for k, v in good.items()}
    bad = dict(good)
    bad["0.weight"] = np.zeros((5, 5), np.float32)
    bad["0.bias"] = bad["0.bias"] + 1
    with pytest.raises(ValueError, match=r"state\['0.weight'\]: expected shape \(4, 3\), got \(5, 5\)"):
        model.load_state_dict(bad)
    for k, v in model.state_dict().items():  # nothing changed, not even the parameters that matched
        np.testing.assert_array_equal(v, before[k])
    missing = dict(good)
    del missing["4.prelu_weight"]
    with pytest.raises(ValueError, match=r"missing parameters \['4.prelu_weight'\]"):
        model.load_state_dict(missing)
    with pytest.raises(ValueError, match=r"unexpected \['9.weight'\]"):
        model.load_state_dict({**good, "9.weight": np.zeros(3)})
    # a value that is no array of numbers fails before anything is written (the arrays before it in
    # the model's order were copied, then the copy of this one failed: a half-loaded model)
    for bad, what in ((np.array(["a", "b"]), "got dtype <U1"), (None, "got dtype object"),
                      ([[1.0, 2.0], [3.0]], "got list")):
        with pytest.raises(TypeError, match=rf"state\['5.block.1.bias'\]: expected an array of numbers, {what}"):
            model.load_state_dict({**{k: v + 1 for k, v in good.items()}, "5.block.1.bias": bad})
        for k, v in model.state_dict().items():
            np.testing.assert_array_equal(v, before[k])
    torch = pytest.importorskip("torch")
    t = {k: torch.tensor(v + 1, requires_grad=True) for k, v in good.items()}  # named_parameters() of a torch model
    with pytest.raises(TypeError, match=r"state\['0.weight'\]: expected an array of numbers, got Tensor "
                                        r"\(RuntimeError: Can't call numpy\(\) on Tensor that requires grad"):
        model.load_state_dict(t)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    model.load_state_dict({k: v.detach() for k, v in t.items()})
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k] + 1)


def test_load_state_dict_strict_false(rng):
    # torch's load_state_dict(sd, strict=False): a pretrained body into a model with a new head
    fastnn.manual_seed(1)
    src = nn.Sequential(nn.Linear(3, 4, activation="relu"), nn.Linear(4, 5))
    fastnn.manual_seed(2)
    dst = nn.Sequential(nn.Linear(3, 4, activation="relu"), nn.Linear(4, 2), nn.Linear(2, 2))
    head = {k: v.copy() for k, v in dst.state_dict().items() if not k.startswith("0.")}
    body = {k: v for k, v in src.state_dict().items() if k.startswith("0.")}
    with pytest.raises(ValueError, match=r"missing parameters \['1.weight', '1.bias', '2.weight', '2.bias'\]"):
        dst.load_state_dict(body)
    assert dst.load_state_dict({**body, "9.weight": np.zeros(3)}, strict=False) is dst
    np.testing.assert_array_equal(dst[0].weight.data, src[0].weight.data)
    np.testing.assert_array_equal(dst[0].bias.data, src[0].bias.data)
    for k, v in dst.state_dict().items():
        if not k.startswith("0."):
            np.testing.assert_array_equal(v, head[k])
    # a shape mismatch of a name both have is still an error, and changes nothing
    before = dst.state_dict()
    with pytest.raises(ValueError, match=r"state\['1.weight'\]: expected shape \(2, 4\), got \(5, 4\)"):
        dst.load_state_dict(src.state_dict(), strict=False)
    for k, v in dst.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


# ---- initialization ---------------------------------------------------------------------------------

_GAINS = {None: 1.0, "sigmoid": 1.0, "tanh": 5 / 3, "relu": np.sqrt(2), "leaky_relu": np.sqrt(2 / (1 + 0.2 ** 2)),
          "prelu": np.sqrt(2 / (1 + 0.25 ** 2)), "elu": np.sqrt(2), "selu": 0.75}


def _std_close(w, expect, what):
    # 400k samples: the sample std is within ~0.2 % of the true one (1 sigma); allow 2 %.
    assert abs(w.std() / expect - 1) < 0.02, f"{what}: std {w.std():.5g}, expected {expect:.5g}"
    assert abs(w.mean()) < 0.01 * expect, f"{what}: mean {w.mean():.3g}"


@pytest.mark.parametrize("activation", ACTS, ids=str)
def test_init_kaiming(activation):
    fan_in, fan_out = 800, 500
    layer = nn.Linear(fan_in, fan_out, activation=activation, negative_slope=0.2, init="kaiming")
    w = layer.weight.data.astype(np.float64)
    _std_close(w, _GAINS[activation] / np.sqrt(fan_in), f"kaiming {activation}")
    # normal, not uniform: about 4.6 % of the samples lie beyond 2 std (uniform: none)
    beyond = np.mean(np.abs(w) > 2 * _GAINS[activation] / np.sqrt(fan_in))
    assert 0.04 < beyond < 0.052
    assert not layer.bias.data.any()
    assert layer.init == "kaiming" and nn.Linear(3, 4).init == "kaiming"  # the default


@pytest.mark.parametrize("activation", ["tanh", "relu", None])
def test_init_xavier(activation):
    fan_in, fan_out = 800, 500
    w = nn.Linear(fan_in, fan_out, activation=activation, init="xavier").weight.data.astype(np.float64)
    bound = _GAINS[activation] * np.sqrt(6 / (fan_in + fan_out))
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound  # uniform on [-bound, bound]
    _std_close(w, bound / np.sqrt(3), f"xavier {activation}")


def test_init_normal_pytorch_zeros():
    fan_in, fan_out = 800, 500
    layer = nn.Linear(fan_in, fan_out, activation="relu", init="normal")
    _std_close(layer.weight.data.astype(np.float64), 0.01, "normal")
    assert not layer.bias.data.any()
    layer = nn.Linear(fan_in, fan_out, init="pytorch")
    bound = 1 / np.sqrt(fan_in)
    w, b = layer.weight.data.astype(np.float64), layer.bias.data.astype(np.float64)
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    _std_close(w, bound / np.sqrt(3), "pytorch")
    assert np.unique(b).size == fan_out  # the bias is drawn too, as torch.nn.Linear
    layer = nn.Linear(20, 30, init="zeros")
    assert not layer.weight.data.any() and not layer.bias.data.any()


def test_init_reproducible_and_reset():
    fastnn.manual_seed(5)
    a = nn.Linear(30, 20, activation="prelu", prelu_init=0.1)
    fastnn.manual_seed(5)
    b = nn.Linear(30, 20, activation="prelu", prelu_init=0.1)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    g = fastnn.Generator(7)
    c = nn.Linear(30, 20, generator=g)
    assert not np.array_equal(a.weight.data, c.weight.data)
    a.weight.data[...] = 3
    a.prelu_weight.data[...] = 0.9
    a.reset_parameters()
    assert np.abs(a.weight.data).max() < 1 and np.all(a.prelu_weight.data == np.float32(0.1))


# ---- arguments and dtypes ---------------------------------------------------------------------------

def test_bad_arguments():
    with pytest.raises(ValueError, match="in_features: expected a positive integer, got -1"):
        nn.Linear(-1, 3)
    with pytest.raises(ValueError, match="out_features: expected a positive integer, got 0"):
        nn.Linear(3, 0)
    with pytest.raises(ValueError, match="in_features: expected a positive integer, got 2.5"):
        nn.Linear(2.5, 3)
    for p in (1.0, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"dropout: expected a probability in \[0, 1\)"):
            nn.Linear(3, 4, dropout=p)
        with pytest.raises(ValueError, match=r"dropconnect: expected a probability in \[0, 1\)"):
            nn.Linear(3, 4, dropconnect=p)
        with pytest.raises(ValueError, match=r"p: expected a probability in \[0, 1\)"):
            nn.Dropout(p)
    with pytest.raises(ValueError, match="init: expected one of 'kaiming', 'xavier', 'normal', 'pytorch', 'zeros', "
                                         "got 'he'"):
        nn.Linear(3, 4, init="he")
    with pytest.raises(ValueError, match="activation: expected one of None, 'sigmoid', 'tanh', 'relu', 'leaky_relu', "
                                         "'prelu', 'elu', 'selu', got 'gelu'"):
        nn.Linear(3, 4, activation="gelu")
    with pytest.raises(TypeError, match="dtype: expected float32 or float64, got int32"):
        nn.Linear(3, 4, dtype=np.int32)
    with pytest.raises(TypeError, match="dtype: expected float32 or float64, got float16"):
        nn.PReLU(3, dtype=np.float16)
    with pytest.raises(ValueError, match="num_parameters: expected a positive integer, got 0"):
        nn.PReLU(0)
    with pytest.raises(TypeError, match=r"modules\[1\]: expected a fastnn.nn.Module, got int"):
        nn.Sequential(nn.ReLU(), 3)
    layer = nn.Linear(3, 4)
    with pytest.raises(ValueError, match=r"x has shape \(2, 5\) and weight has shape \(4, 3\)"):
        layer(np.ones((2, 5), np.float32))


def test_layer_constants_are_checked():
    """negative_slope / alpha as the functional ops check them (a string was converted silently,
    None raised float()'s message naming nothing), and finite: NaN made every output NaN."""
    for make, name in ((lambda v: nn.LeakyReLU(v), "negative_slope"), (lambda v: nn.ELU(v), "alpha"),
                       (lambda v: nn.Linear(3, 2, activation="leaky_relu", negative_slope=v), "negative_slope"),
                       (lambda v: nn.Linear(3, 2, activation="elu", alpha=v), "alpha")):
        for bad, kind in (("0.1", "str"), (None, "NoneType"), (True, "bool")):
            with pytest.raises(TypeError, match=f"{name}: expected a real number, got {kind}"):
                make(bad)
        for bad in (float("nan"), float("inf"), -np.inf):
            with pytest.raises(ValueError, match=f"{name}: expected a finite real number, got"):
                make(bad)
        assert make(np.float32(0.5)) is not None  # NumPy scalars are real numbers


@pytest.mark.parametrize("training", [True, False])
def test_input_dtype_mismatch_names_x(training):
    """float64 data (NumPy's default) into a float32 model: the error names x and the fix, not the
    layer's weight (which the caller never passed)."""
    model = nn.Sequential(nn.Linear(4, 3, activation="relu"), nn.Linear(3, 2))
    model.train(training)
    with pytest.raises(TypeError, match=r"x: expected dtype float32 like the layer's parameters, got float64 "
                                        r"\(convert the input: x.astype\(np.float32\)\)"):
        model(np.ones((5, 4)))
    assert model(np.ones((5, 4), np.float32)).shape == (5, 2)
    # a list (float64 to NumPy) or a float64 CPU tensor: the same message (it blamed `weight`)
    others = [[[1.0, 2.0, 3.0, 4.0]] * 5]
    torch = pytest.importorskip("torch") if training else None
    if torch is not None:
        others.append(torch.ones((5, 4), dtype=torch.float64))
    for x in others:
        with pytest.raises(TypeError, match=r"x: expected dtype float32 like the layer's parameters, got float64"):
            model(x)
    m64 = nn.Sequential(nn.Linear(4, 3, activation="relu", dtype=np.float64), nn.Linear(3, 2, dtype=np.float64))
    m64.train(training)
    np.testing.assert_array_equal(m64(others[0]), m64(np.array(others[0])))
    prelu = nn.PReLU(4).train(training)  # (it blamed `weight` too)
    with pytest.raises(TypeError, match=r"x: expected dtype float32 like the layer's parameters, got float64 "
                                        r"\(convert the input: x.astype\(np.float32\)\)"):
        prelu(np.ones((5, 4)))
    with pytest.raises(TypeError, match=r"x: expected dtype float32 like the layer's parameters, got float64"):
        prelu([[1.0, -2.0, 3.0, 4.0]])
    assert prelu(np.ones((5, 4), np.float32)).dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtypes(rng, dtype):
    """A model built in float32 or float64 keeps that dtype through forward, backward and its
    gradients; the float32 model agrees with the float64 one to float32 accuracy."""
    def build(dt):
        fastnn.manual_seed(11)
        return nn.Sequential(nn.Linear(20, 30, activation="relu", dtype=dt), nn.PReLU(30, dtype=dt),
                             nn.Linear(30, 30, activation="tanh", dtype=dt),
                             nn.Residual(nn.Linear(30, 30, activation="selu", dtype=dt), zero_init_last=False),
                             nn.Linear(30, 5, dtype=dt))
    model = build(dtype)
    x = rng.standard_normal((64, 20)).astype(dtype)
    y = model(x)
    assert y.dtype == dtype
    gx = model.backward(np.ones_like(y))
    assert gx.dtype == dtype
    assert all(p.data.dtype == dtype and p.grad.dtype == dtype for p in model.parameters())
    ref64 = build(np.float64)
    ref64.load_state_dict(model.state_dict())
    y64 = ref64(x.astype(np.float64))
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, y64, rtol=tol, atol=tol)
    with pytest.raises(TypeError, match="expected dtype"):
        model(x.astype(np.float32 if dtype == np.float64 else np.float64))


def test_repr():
    r = repr(_zoo())
    assert "(0): Linear(3, 4, bias=True)" in r and "(6): Dropout(p=0.5)" in r
    want = "Linear(3, 4, bias=True, activation='relu', dropout=0.1)"
    assert repr(nn.Linear(3, 4, activation="relu", dropout=0.1)) == want


def test_training_loop_learns(rng):
    """The pieces together: a small MLP on a teacher task gets well above chance with SGD."""
    from fastnn import datasets, optim
    X, y = datasets.make_teacher(1200, 20, 4, seed=3)
    fastnn.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64, activation="relu"), nn.Linear(64, 4))
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.SoftmaxCrossEntropy()
    for _epoch in range(5):
        for i in range(0, 1000, 50):
            loss_fn(model(X[i:i + 50]), y[i:i + 50])
            model.backward(loss_fn.backward())
            opt.step()
    model.eval()
    acc = np.mean(np.argmax(model(X[1000:]), axis=1) == y[1000:])
    assert acc > 0.7, acc


# ---- need_input_grad: skipping the input's gradient ----------------------------------------------

def test_linear_need_input_grad_false(rng):
    layer = _linear64(6, 5, activation="relu", dropout=0.3, dropconnect=0.2)
    x = rng.standard_normal((4, 6))
    g = rng.standard_normal((4, 5))
    fastnn.manual_seed(4)
    layer(x)
    full = layer.backward(g)
    gw, gb = layer.weight.grad.copy(), layer.bias.grad.copy()
    fastnn.manual_seed(4)
    layer(x)
    assert layer.backward(g, need_input_grad=False) is None
    np.testing.assert_array_equal(layer.weight.grad, gw)  # the parameter gradients are unchanged
    np.testing.assert_array_equal(layer.bias.grad, gb)
    assert full.shape == x.shape


@pytest.mark.parametrize("head", ["linear", "dropout_prelu", "residual"])
def test_sequential_need_input_grad_false(rng, head):
    first = {"linear": [_linear64(6, 6, activation="tanh")],
             "dropout_prelu": [nn.Dropout(0.3), nn.PReLU(6, dtype=np.float64), nn.ReLU()],
             "residual": [nn.Residual(_linear64(6, 6, activation="elu"), zero_init_last=False)]}[head]
    model = nn.Sequential(*first, _linear64(6, 5, activation="relu", dropout=0.2), _linear64(5, 3))
    _perturb_params(model, rng)
    x = rng.standard_normal((7, 6))
    g = rng.standard_normal((7, 3))
    fastnn.manual_seed(8)
    model(x)
    assert model.backward(g).shape == x.shape
    grads = [p.grad.copy() for p in model.parameters()]
    fastnn.manual_seed(8)
    model(x)
    assert model.backward(g, need_input_grad=False) is None
    for p, expect in zip(model.parameters(), grads):
        np.testing.assert_array_equal(p.grad, expect)


def test_loss_given_its_own_gradient_buffer(rng):
    """backward() returns a buffer the loss reuses; passing it back in as logits must not alias
    the kernel's input and output."""
    loss_fn = nn.SoftmaxCrossEntropy()
    x = rng.standard_normal((5, 4))
    t = rng.integers(0, 4, 5)
    loss_fn(x, t)
    g = loss_fn.backward()
    expect_loss = nn.SoftmaxCrossEntropy()(g.copy(), t)
    assert loss_fn(g, t) == expect_loss
    with pytest.raises(ValueError, match=r"target: expected class labels in \[0, 4\), got 4 at row 0"):
        loss_fn(x, np.array([4, 0, 0, 0, 0]))
