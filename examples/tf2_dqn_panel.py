"""examples/tf2_dqn.py with dqnlab's panel added (`diff examples/tf2_dqn.py examples/tf2_dqn_panel.py`).

    python examples/tf2_dqn_panel.py --steps 20000 [--huber] [--logdir runs] [--name user_loop]

A Python-list replay, a GradientTape step, a Keras loss object, a target network refreshed with
`set_weights`. It clips the TD error to [-1, 1] "for stability, as in the Nature DQN" before squaring it:
see docs/your_agent.md for what that does to the gradient. `--huber` is the fix.
"""

import argparse
import random

import gymnasium as gym
import numpy as np
import tensorflow as tf
from tensorflow import keras

import dqnlab


def build_q_net(obs_dim, num_actions):
    return keras.Sequential(
        [
            keras.Input((obs_dim,)),
            keras.layers.Dense(64, activation="relu", name="dense_1"),
            keras.layers.Dense(64, activation="relu", name="dense_2"),
            keras.layers.Dense(num_actions, name="q_values"),
        ]
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--huber", action="store_true", help="Huber loss instead of the clipped TD error")
    ap.add_argument("--logdir", default="runs")
    ap.add_argument("--name", default="user_loop")
    args = ap.parse_args(argv)

    random.seed(args.seed)
    keras.utils.set_random_seed(args.seed)
    env, eval_env = gym.make("CartPole-v1"), gym.make("CartPole-v1")
    num_actions = int(env.action_space.n)
    q_net = build_q_net(env.observation_space.shape[0], num_actions)
    target_net = build_q_net(env.observation_space.shape[0], num_actions)
    target_net.set_weights(q_net.get_weights())
    optimizer = keras.optimizers.Adam(learning_rate=1e-3)
    loss_object = keras.losses.Huber() if args.huber else keras.losses.MeanSquaredError()
    gamma, batch_size, learning_starts, target_every = 0.99, 64, 1000, 500
    replay, capacity = [], 50_000
    panel = dqnlab.Panel(
        q_net,
        env="CartPole-v1",
        arm="tf2_dqn_huber" if args.huber else "tf2_dqn_clipped",
        experiment=args.name,
        logdir=args.logdir,
        seed=args.seed,
        gamma=gamma,
        bound=1.0,
        loss="keras Huber" if args.huber else "MSE of clip(delta, -1, 1)",
        probe_every=500,
    )

    def greedy_return():
        obs, _ = eval_env.reset(seed=random.randrange(2**31))
        total, done = 0.0, False
        while not done:
            action = int(np.argmax(q_net(obs[None].astype(np.float32))[0]))
            obs, reward, terminated, truncated, _ = eval_env.step(action)
            total, done = total + reward, terminated or truncated
        return total

    obs, _ = env.reset(seed=args.seed)
    episode_return, episode_length = 0.0, 0
    for step in range(1, args.steps + 1):
        epsilon = max(0.05, 1.0 - step / 10_000)
        if random.random() < epsilon:
            action = env.action_space.sample()
        else:
            action = int(np.argmax(q_net(obs[None].astype(np.float32))[0]))
        next_obs, reward, terminated, truncated, _ = env.step(action)
        replay.append((obs, action, reward, next_obs, float(terminated)))
        if len(replay) > capacity:
            replay.pop(0)
        obs, episode_return, episode_length = next_obs, episode_return + reward, episode_length + 1
        if terminated or truncated:
            print(f"step {step}: return {episode_return:.0f}")
            panel.episode(step, episode_return, episode_length, epsilon)
            obs, _ = env.reset()
            episode_return, episode_length = 0.0, 0

        if step >= learning_starts:
            o, a, r, o2, d = map(np.array, zip(*random.sample(replay, batch_size), strict=True))
            o, o2, r, d = (x.astype(np.float32) for x in (o, o2, r, d))
            target = r + gamma * (1.0 - d) * tf.reduce_max(target_net(o2), axis=1)
            with tf.GradientTape() as tape:
                q = q_net(o)
                qa = tf.gather(q, a, batch_dims=1)
                if args.huber:
                    loss = loss_object(target, qa)
                else:  # clip the TD error to [-1, 1], then square it
                    delta = tf.clip_by_value(target - qa, -1.0, 1.0)
                    loss = loss_object(tf.zeros_like(delta), delta)
            grads = panel.gradients(
                tape, loss, q_net.trainable_variables, qa=qa, target=target, q=q, obs=o, step=step
            )
            optimizer.apply_gradients(zip(grads, q_net.trainable_variables, strict=True))
        if step % target_every == 0:
            target_net.set_weights(q_net.get_weights())
        if step % 5000 == 0 or step == args.steps:
            returns = [greedy_return() for _ in range(5)]
            print(f"step {step}: greedy return {panel.evaluate(step, returns):.1f}")
    panel.close()
    return panel.run_dir


if __name__ == "__main__":
    main()
