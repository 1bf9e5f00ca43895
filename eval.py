"""Thin entry point; the work is in absa_lightning/evaluate.py (also installed as absa-eval)."""

from absa_lightning.evaluate import main

if __name__ == "__main__":
    main()
