"""Optimizer factories named by conf/optimizer/*.yaml.

Each takes `lr` (a float or a schedule) under the name the configs use, so
`optimizer.lr=0.05` on the command line means what it says. Weight decay is Keras'
decoupled decay and skips biases and normalization parameters, as the CIFAR recipes do.
Every factory also takes `global_clipnorm` (clip the gradients' joint norm) and
`gradient_accumulation_steps` (update once per that many batches, with their mean
gradient), so a preset that sets them composes with any optimizer group.
"""

import keras

NO_DECAY = ["bias", "gamma", "beta"]


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
    global_clipnorm=None,
    gradient_accumulation_steps=1,
) -> keras.optimizers.Optimizer:
    shared = _shared(weight_decay, global_clipnorm, gradient_accumulation_steps)
    return _skip_norm_and_bias(
        keras.optimizers.SGD(learning_rate=lr, momentum=momentum, nesterov=nesterov, **shared)
    )


def adam(
    lr,
    beta_1=0.9,
    beta_2=0.999,
    weight_decay=0.0,
    global_clipnorm=None,
    gradient_accumulation_steps=1,
) -> keras.optimizers.Optimizer:
    shared = _shared(weight_decay, global_clipnorm, gradient_accumulation_steps)
    return _skip_norm_and_bias(
        keras.optimizers.Adam(learning_rate=lr, beta_1=beta_1, beta_2=beta_2, **shared)
    )


def adamw(
    lr,
    beta_1=0.9,
    beta_2=0.999,
    weight_decay=0.05,
    global_clipnorm=None,
    gradient_accumulation_steps=1,
) -> keras.optimizers.Optimizer:
    shared = _shared(weight_decay, global_clipnorm, gradient_accumulation_steps)
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
    global_clipnorm=None,
    gradient_accumulation_steps=1,
) -> keras.optimizers.Optimizer:
    shared = _shared(weight_decay, global_clipnorm, gradient_accumulation_steps)
    return _skip_norm_and_bias(
        keras.optimizers.RMSprop(
            learning_rate=lr, rho=rho, momentum=momentum, epsilon=epsilon, **shared
        )
    )
