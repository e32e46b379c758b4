"""Caffe-exact solvers: lr policies, parameter groups, update rules, the training loop, snapshots."""
