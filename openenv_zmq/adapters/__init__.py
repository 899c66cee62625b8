"""Adapters that host other projects' envs as openenv-zmq envs."""
