"""Hand-written optimizers on flat parameter vectors, and the balancing rules.

Torch7's `module:getParameters()` returned one contiguous parameter tensor
and one gradient tensor for a whole network, and `optim` functions updated
them in place. `flatten_parameters` rebuilds that in PyTorch, and `rmsprop`,
`adam` and `sgd` keep Torch optim's contract: `opfunc(x)` returns
`(f, dfdx)`, the function returns `(x, [f])`, and `config` is the
`sgdState` dict, which here also stores the optimizer buffers.

The `sgdState` keys mirror the Lua: `learningRate`, `momentum`,
`optimize` (update only when true), `coefL2` (L2 penalty) and
`numUpdates` (calls so far, skipped ones included).
"""

import math

import torch


def flatten_parameters(module):
    """Return flat `(parameters, gradients)` tensors that back `module`'s parameters.

    Every parameter and its `.grad` become views into the two flat tensors,
    so an update of the flat vector is an update of the module. Move the
    module to its device and memory format first: `.to()` or `.cuda()`
    afterwards replace the parameters and break the views. Convolution
    weights in channels_last keep that layout inside the flat tensor. Zero the gradients with
    `gradients.zero_()`, never `module.zero_grad()`, whose default sets
    `.grad` to None and detaches it from the flat tensor.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(module).__name__} has no trainable parameters")
    first = params[0]
    total = sum(p.numel() for p in params)
    flat = torch.empty(total, dtype=first.dtype, device=first.device)
    flat_grad = torch.zeros(total, dtype=first.dtype, device=first.device)
    offset = 0
    for p in params:
        n = p.numel()
        p_view = _view_like(flat[offset : offset + n], p)
        p_view.copy_(p.detach())
        p.data = p_view
        p.grad = _view_like(flat_grad[offset : offset + n], p)
        offset += n
    return flat, flat_grad


def _view_like(segment, p):
    """View a flat segment with `p`'s shape, in channels_last order when `p` has it."""
    if p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last):
        o, i, h, w = p.shape
        return segment.view(o, h, w, i).permute(0, 3, 1, 2)
    return segment.view_as(p)


def new_sgd_state(learning_rate, momentum=0.0, coef_l2=0.0):
    """Return a fresh `sgdState` dict with the Lua's keys."""
    return {
        "learningRate": learning_rate,
        "momentum": momentum,
        "optimize": True,
        "coefL2": coef_l2,
        "numUpdates": 0,
    }


def warmup_factor(num_updates):
    """Return the divisor of the learning rate during the Lua's warm-up.

    Steps 0-9 use learningRate/50, steps 10-29 learningRate/5, then the full
    rate. `numUpdates` counts skipped calls too, as in the Lua.
    """
    if num_updates < 10:
        return 50.0
    if num_updates < 30:
        return 5.0
    return 1.0


def rmsprop(opfunc, x, config, state=None):
    """Take one RMSProp step on `x` in place, as the Lua's `rmsprop`.

    m = alpha*m + (1-alpha)*g^2, then x -= lr_warm * g / (sqrt(m) + eps),
    with alpha 0.9 and epsilon 1e-8 unless `config` sets them. Buffers `m`
    and `tmp` live in `state`, which defaults to `config`.
    """
    state = config if state is None else state
    lr = config.get("learningRate", 1e-2)
    alpha = config.get("alpha", 0.9)
    epsilon = config.get("epsilon", 1e-8)

    fx, dfdx = opfunc(x)
    if config["optimize"]:
        if "m" not in state:
            state["m"] = torch.zeros_like(dfdx)
            state["tmp"] = torch.empty_like(dfdx)
        m, tmp = state["m"], state["tmp"]
        m.mul_(alpha).addcmul_(dfdx, dfdx, value=1.0 - alpha)
        torch.sqrt(m, out=tmp).add_(epsilon)
        x.addcdiv_(dfdx, tmp, value=-lr / warmup_factor(config["numUpdates"]))
    config["numUpdates"] += 1
    return x, [fx]


def adam(opfunc, x, config, state=None):
    """Take one Adam step on `x` in place, as the Lua's `adam`.

    Bias-corrected Adam (beta1 0.9, beta2 0.999, epsilon 1e-8 unless set in
    `config`) with the same warm-up divisor as `rmsprop`. The step counter
    `t` advances only on updates; `numUpdates` advances on every call.
    """
    state = config if state is None else state
    lr = config.get("learningRate", 1e-3)
    beta1 = config.get("beta1", 0.9)
    beta2 = config.get("beta2", 0.999)
    epsilon = config.get("epsilon", 1e-8)

    fx, dfdx = opfunc(x)
    if config["optimize"]:
        if "m" not in state:
            state["t"] = 0
            state["m"] = torch.zeros_like(dfdx)
            state["v"] = torch.zeros_like(dfdx)
            state["denom"] = torch.empty_like(dfdx)
        state["t"] += 1
        m, v, denom = state["m"], state["v"], state["denom"]
        m.mul_(beta1).add_(dfdx, alpha=1.0 - beta1)
        v.mul_(beta2).addcmul_(dfdx, dfdx, value=1.0 - beta2)
        torch.sqrt(v, out=denom).add_(epsilon)
        bias_correction1 = 1.0 - beta1 ** state["t"]
        bias_correction2 = 1.0 - beta2 ** state["t"]
        lr_warm = lr / warmup_factor(config["numUpdates"])
        step_size = lr_warm * math.sqrt(bias_correction2) / bias_correction1
        x.addcdiv_(m, denom, value=-step_size)
    config["numUpdates"] += 1
    return x, [fx]


def sgd(opfunc, x, config, state=None):
    """Take one SGD step on `x` in place, as Torch optim's `sgd`.

    Supports `learningRateDecay`, `weightDecay`, `momentum`, `dampening`
    (defaults to the momentum, as in Torch) and `nesterov`. No warm-up: the
    Lua's warm-up lived only in its own rmsprop and adam.
    """
    state = config if state is None else state
    lr = config.get("learningRate", 1e-3)
    lr_decay = config.get("learningRateDecay", 0.0)
    weight_decay = config.get("weightDecay", 0.0)
    momentum = config.get("momentum", 0.0)
    dampening = config.get("dampening", momentum)
    nesterov = config.get("nesterov", False)

    fx, dfdx = opfunc(x)
    if config["optimize"]:
        step = dfdx
        if weight_decay != 0:
            step = step.add(x, alpha=weight_decay)
        if momentum != 0:
            if "dfdx" not in state:
                state["dfdx"] = step.clone()
            else:
                state["dfdx"].mul_(momentum).add_(step, alpha=1.0 - dampening)
            if nesterov:
                step = step.add(state["dfdx"], alpha=momentum)
            else:
                step = state["dfdx"]
        eval_counter = state.get("evalCounter", 0)
        x.add_(step, alpha=-lr / (1.0 + eval_counter * lr_decay))
        state["evalCounter"] = eval_counter + 1
    config["numUpdates"] += 1
    return x, [fx]


OPTIMIZERS = {"rmsprop": rmsprop, "adam": adam, "sgd": sgd}


def add_penalties(f, x, dfdx, coef_l1=0.0, coef_l2=0.0):
    """Add L1 and L2 weight penalties to a loss and, in place, to its gradient.

    Loss: f + coef_l1*||x||_1 + coef_l2*||x||^2/2. Gradient:
    dfdx + coef_l1*sign(x) + coef_l2*x. Returns the new loss.
    """
    if coef_l1 != 0:
        f = f + coef_l1 * x.abs().sum().item()
        dfdx.add_(torch.sign(x), alpha=coef_l1)
    if coef_l2 != 0:
        f = f + coef_l2 * x.pow(2).sum().item() / 2
        dfdx.add_(x, alpha=coef_l2)
    return f


def balance_margin(err_R, err_F, sgdState_D, sgdState_G, margin=0.3):
    """Set both `optimize` flags by the margin rule of the Lua.

    D is skipped when it is already good (err_F or err_R below `margin`),
    G is skipped when D is bad (err_F or err_R above 1 - margin). When both
    would be skipped, both are updated.
    """
    optimize_D = not (err_F < margin or err_R < margin)
    optimize_G = not (err_F > 1.0 - margin or err_R > 1.0 - margin)
    if not optimize_D and not optimize_G:
        optimize_D = optimize_G = True
    sgdState_D["optimize"] = optimize_D
    sgdState_G["optimize"] = optimize_G


def balance_l2(err_G, sgdState_D, low=0.9, high=1.3, step=1e-5):
    """Adapt D's L2 penalty to the generator error, in place.

    A high err_G means D wins, so its penalty rises by `step`. A low err_G
    means G wins, so it falls by `step`, never below 0.
    """
    if err_G > high:
        sgdState_D["coefL2"] += step
    elif err_G < low:
        sgdState_D["coefL2"] = max(sgdState_D["coefL2"] - step, 0.0)
