"""Recipes: whole workflows wired from the layers below (D2O, rDPO with its critique data, the demo)."""
