"""Reinforcement learning side: environments, policies, returns, the ACKTR/A2C trainer."""
