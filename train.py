"""Thin entry point; the work is in absa_lightning/train.py (also installed as absa-train)."""

from absa_lightning.train import main

if __name__ == "__main__":
    main()
