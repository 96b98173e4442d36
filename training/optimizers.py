"""Optimizer factories named by conf/optimizer/*.yaml.

Each takes `lr` (a float or a schedule) under the name the configs use, so
`optimizer.lr=0.05` on the command line means what it says. Weight decay skips biases and
normalization parameters, as the CIFAR recipes do, in one of two forms
(`weight_decay_form`): `decoupled`, Keras' (w -= lr * wd * w beside the update), or
`coupled`, PyTorch's (wd * w joins the gradient, so momentum carries it: at momentum 0.9
it decays about 10x as much as the same wd decoupled). The recipes quote the coupled
value; `coupled` takes it as printed.
Every factory also takes `global_clipnorm` (clip the gradients' joint norm) and
`gradient_accumulation_steps` (update once per that many batches, with their mean
gradient), so a preset that sets them composes with any optimizer group.
"""

import keras
from keras import ops

from errors import UserError

NO_DECAY = ["bias", "gamma", "beta"]
WEIGHT_DECAY_FORMS = ("decoupled", "coupled")


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
class CoupledDecaySGD(_CoupledDecay, keras.optimizers.SGD):
    pass


@keras.saving.register_keras_serializable(package="cifar100")
class CoupledDecayAdam(_CoupledDecay, keras.optimizers.Adam):
    pass


@keras.saving.register_keras_serializable(package="cifar100")
class CoupledDecayRMSprop(_CoupledDecay, keras.optimizers.RMSprop):
    pass


def _coupled(weight_decay_form) -> bool:
    if weight_decay_form not in WEIGHT_DECAY_FORMS:
        raise UserError(
            f"optimizer.weight_decay_form={weight_decay_form!r} is not valid; "
            "use decoupled (Keras) or coupled (PyTorch)"
        )
    return weight_decay_form == "coupled"


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
    global_clipnorm=None,
    gradient_accumulation_steps=1,
) -> keras.optimizers.Optimizer:
    shared = _shared(weight_decay, global_clipnorm, gradient_accumulation_steps)
    optimizer = CoupledDecaySGD if _coupled(weight_decay_form) else keras.optimizers.SGD
    return _skip_norm_and_bias(
        optimizer(learning_rate=lr, momentum=momentum, nesterov=nesterov, **shared)
    )


def adam(
    lr,
    beta_1=0.9,
    beta_2=0.999,
    weight_decay=0.0,
    weight_decay_form="decoupled",
    global_clipnorm=None,
    gradient_accumulation_steps=1,
) -> keras.optimizers.Optimizer:
    shared = _shared(weight_decay, global_clipnorm, gradient_accumulation_steps)
    optimizer = CoupledDecayAdam if _coupled(weight_decay_form) else keras.optimizers.Adam
    return _skip_norm_and_bias(optimizer(learning_rate=lr, beta_1=beta_1, beta_2=beta_2, **shared))


def adamw(
    lr,
    beta_1=0.9,
    beta_2=0.999,
    weight_decay=0.05,
    weight_decay_form="decoupled",
    global_clipnorm=None,
    gradient_accumulation_steps=1,
) -> keras.optimizers.Optimizer:
    shared = _shared(weight_decay, global_clipnorm, gradient_accumulation_steps)
    if _coupled(weight_decay_form):
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
    global_clipnorm=None,
    gradient_accumulation_steps=1,
) -> keras.optimizers.Optimizer:
    shared = _shared(weight_decay, global_clipnorm, gradient_accumulation_steps)
    optimizer = CoupledDecayRMSprop if _coupled(weight_decay_form) else keras.optimizers.RMSprop
    return _skip_norm_and_bias(
        optimizer(learning_rate=lr, rho=rho, momentum=momentum, epsilon=epsilon, **shared)
    )
