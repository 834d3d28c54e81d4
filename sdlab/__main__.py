"""`python -m sdlab`: the console script `sdlab`, importing what it imports."""

from sdlab.app.cli import main

if __name__ == "__main__":  # not again in a worker process that imports the parent's main module
    main()
