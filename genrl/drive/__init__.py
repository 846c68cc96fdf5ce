"""Driving: highway-env scenes, the Gen-Drive scene generator, evaluator, planner and closed-loop evaluation."""
