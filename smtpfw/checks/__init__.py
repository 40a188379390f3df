"""Checks that gather facts for the rules: lists (in-memory tables) and DNS."""
