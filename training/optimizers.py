"""Optimizer factories named by conf/optimizer/*.yaml.

Each takes `lr` (a float or a schedule) under the name the configs use, so
`optimizer.lr=0.05` on the command line means what it says. Weight decay skips biases and
normalization parameters, as the CIFAR recipes do, in one of two forms
(`weight_decay_form`): `decoupled`, Keras' (w -= lr * wd * w beside the update), or
`coupled`, PyTorch's (wd * w joins the gradient, so momentum carries it: at momentum 0.9
it decays about 10x as much as the same wd decoupled). The recipes quote the coupled
value; `coupled` takes it as printed.
`momentum_form` says where a momentum buffer keeps the lr. `keras`: inside (v = mu*v - lr*g,
w += v), so under a changing lr the step follows the schedule about 1 / (1 - mu) steps
late, ~5 % smaller at lr 0.01 in a warmup. `torch`: outside (v = mu*v + g, w -= lr*v), as
PyTorch's SGD and RMSprop. Equal at a constant lr; Adam's moments hold no lr, so Adam and
AdamW take either and are the same.
Every factory also takes `global_clipnorm` (clip the gradients' joint norm) and
`gradient_accumulation_steps` (update once per that many batches, with their mean
gradient), so a preset that sets them composes with any optimizer group.
"""

import keras
from keras import ops

from errors import UserError

NO_DECAY = ["bias", "gamma", "beta"]
# Each form's choices, Keras' first and PyTorch's second, and what they mean.
FORMS = {
    "weight_decay_form": (("decoupled", "coupled"), "decoupled (Keras) or coupled (PyTorch)"),
    "momentum_form": (
        ("keras", "torch"),
        "keras (lr inside the momentum buffer) or torch (lr outside, PyTorch's)",
    ),
}


class _CoupledDecay:
    """Weight decay as PyTorch's optimizers do it: wd * w added to the gradient."""

    def _apply_weight_decay(self, variables):
        return  # update_step adds it to the gradient instead

    def update_step(self, gradient, variable, learning_rate):
        if self.weight_decay is not None and self._use_weight_decay(variable):
            decay = ops.multiply(variable, ops.cast(self.weight_decay, variable.dtype))
            gradient = ops.add(ops.cast(gradient, variable.dtype), decay)
        super().update_step(gradient, variable, learning_rate)


# Registered, so best.keras (which stores the optimizer's class) loads again.
@keras.saving.register_keras_serializable(package="cifar100")
class TorchMomentumSGD(keras.optimizers.SGD):
    """SGD with PyTorch's buffer: v = mu*v + g, then w -= lr * (g + mu*v) (Nesterov) or lr * v."""

    def update_step(self, gradient, variable, learning_rate):
        if self.momentum == 0:
            return super().update_step(gradient, variable, learning_rate)
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        momentum = ops.cast(self.momentum, variable.dtype)
        buffer = self.momentums[self._get_variable_index(variable)]
        self.assign(buffer, ops.add(ops.multiply(buffer, momentum), gradient))
        step = ops.add(gradient, ops.multiply(buffer, momentum)) if self.nesterov else buffer
        self.assign_sub(variable, ops.multiply(step, lr))


@keras.saving.register_keras_serializable(package="cifar100")
class TorchMomentumRMSprop(keras.optimizers.RMSprop):
    """RMSprop with PyTorch's buffer: v = mu*v + g / sqrt(ms + eps), then w -= lr * v
    (Keras' epsilon placement kept)."""

    def update_step(self, gradient, variable, learning_rate):
        if self.momentum == 0:
            return super().update_step(gradient, variable, learning_rate)
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        index = self._get_variable_index(variable)
        mean_square = self._velocities[index]
        self.assign(
            mean_square,
            ops.add(
                ops.multiply(self.rho, mean_square),
                ops.multiply(1 - self.rho, ops.square(gradient)),
            ),
        )
        denominator = ops.add(mean_square, self.epsilon)
        if self.centered:
            mean = self._average_gradients[index]
            self.assign(
                mean, ops.add(ops.multiply(self.rho, mean), ops.multiply(1 - self.rho, gradient))
            )
            denominator = ops.subtract(denominator, ops.square(mean))
        buffer = self._momentums[index]
        scaled = ops.divide(gradient, ops.sqrt(denominator))
        self.assign(buffer, ops.add(ops.multiply(self.momentum, buffer), scaled))
        self.assign_sub(variable, ops.multiply(buffer, lr))


@keras.saving.register_keras_serializable(package="cifar100")
class CoupledDecaySGD(_CoupledDecay, keras.optimizers.SGD):
    pass


@keras.saving.register_keras_serializable(package="cifar100")
class CoupledDecayTorchMomentumSGD(_CoupledDecay, TorchMomentumSGD):
    pass


@keras.saving.register_keras_serializable(package="cifar100")
class CoupledDecayAdam(_CoupledDecay, keras.optimizers.Adam):
    pass


@keras.saving.register_keras_serializable(package="cifar100")
class CoupledDecayRMSprop(_CoupledDecay, keras.optimizers.RMSprop):
    pass


@keras.saving.register_keras_serializable(package="cifar100")
class CoupledDecayTorchMomentumRMSprop(_CoupledDecay, TorchMomentumRMSprop):
    pass


def _is_torch_form(key: str, value) -> bool:
    """Checks `optimizer.<key>` and says whether it is PyTorch's form (the second)."""
    (keras_form, torch_form), meaning = FORMS[key]
    if value not in (keras_form, torch_form):
        raise UserError(f"optimizer.{key}={value!r} is not valid; use {meaning}")
    return value == torch_form


# The class for each (coupled decay, PyTorch's momentum buffer) pair.
_VARIANTS = {
    "sgd": {
        (False, False): keras.optimizers.SGD,
        (True, False): CoupledDecaySGD,
        (False, True): TorchMomentumSGD,
        (True, True): CoupledDecayTorchMomentumSGD,
    },
    "rmsprop": {
        (False, False): keras.optimizers.RMSprop,
        (True, False): CoupledDecayRMSprop,
        (False, True): TorchMomentumRMSprop,
        (True, True): CoupledDecayTorchMomentumRMSprop,
    },
}


def _variant(name: str, weight_decay_form, momentum_form) -> type:
    coupled = _is_torch_form("weight_decay_form", weight_decay_form)
    return _VARIANTS[name][coupled, _is_torch_form("momentum_form", momentum_form)]


def _shared(weight_decay, global_clipnorm, gradient_accumulation_steps) -> dict:
    return {
        # None, not 0, so that Keras builds no decay ops at all.
        "weight_decay": weight_decay or None,
        "global_clipnorm": global_clipnorm,
        # Keras takes None or >= 2; the configs' 1 means an update every batch.
        "gradient_accumulation_steps": (
            gradient_accumulation_steps if (gradient_accumulation_steps or 1) > 1 else None
        ),
    }


def _skip_norm_and_bias(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    if optimizer.weight_decay:
        optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
    return optimizer


def sgd(
    lr,
    momentum=0.9,
    nesterov=True,
    weight_decay=0.0,
    weight_decay_form="decoupled",
    momentum_form="keras",
    global_clipnorm=None,
    gradient_accumulation_steps=1,
) -> keras.optimizers.Optimizer:
    shared = _shared(weight_decay, global_clipnorm, gradient_accumulation_steps)
    optimizer = _variant("sgd", weight_decay_form, momentum_form)
    return _skip_norm_and_bias(
        optimizer(learning_rate=lr, momentum=momentum, nesterov=nesterov, **shared)
    )


def adam(
    lr,
    beta_1=0.9,
    beta_2=0.999,
    weight_decay=0.0,
    weight_decay_form="decoupled",
    momentum_form="keras",
    global_clipnorm=None,
    gradient_accumulation_steps=1,
) -> keras.optimizers.Optimizer:
    shared = _shared(weight_decay, global_clipnorm, gradient_accumulation_steps)
    _is_torch_form("momentum_form", momentum_form)  # checked; Adam's moments hold no lr
    coupled = _is_torch_form("weight_decay_form", weight_decay_form)
    optimizer = CoupledDecayAdam if coupled else keras.optimizers.Adam
    return _skip_norm_and_bias(optimizer(learning_rate=lr, beta_1=beta_1, beta_2=beta_2, **shared))


def adamw(
    lr,
    beta_1=0.9,
    beta_2=0.999,
    weight_decay=0.05,
    weight_decay_form="decoupled",
    momentum_form="keras",
    global_clipnorm=None,
    gradient_accumulation_steps=1,
) -> keras.optimizers.Optimizer:
    shared = _shared(weight_decay, global_clipnorm, gradient_accumulation_steps)
    _is_torch_form("momentum_form", momentum_form)  # checked; AdamW's moments hold no lr
    if _is_torch_form("weight_decay_form", weight_decay_form):
        # AdamW with its decay coupled is Adam with an L2 term (PyTorch's Adam weight_decay).
        return _skip_norm_and_bias(
            CoupledDecayAdam(learning_rate=lr, beta_1=beta_1, beta_2=beta_2, **shared)
        )
    shared["weight_decay"] = weight_decay  # AdamW refuses None
    return _skip_norm_and_bias(
        keras.optimizers.AdamW(learning_rate=lr, beta_1=beta_1, beta_2=beta_2, **shared)
    )


def rmsprop(
    lr,
    rho=0.9,
    momentum=0.9,
    epsilon=1e-3,
    weight_decay=0.0,
    weight_decay_form="decoupled",
    momentum_form="keras",
    global_clipnorm=None,
    gradient_accumulation_steps=1,
) -> keras.optimizers.Optimizer:
    shared = _shared(weight_decay, global_clipnorm, gradient_accumulation_steps)
    optimizer = _variant("rmsprop", weight_decay_form, momentum_form)
    return _skip_norm_and_bias(
        optimizer(learning_rate=lr, rho=rho, momentum=momentum, epsilon=epsilon, **shared)
    )
