"""``python -m revcurse`` is the same as the ``revcurse`` console script."""

from revcurse.cli import main

if __name__ == "__main__":
    main()
