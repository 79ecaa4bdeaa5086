"""`python -m alignfactory.run spec.yaml` is what `ray job submit` runs."""

from alignfactory.run.command import main

if __name__ == "__main__":
    raise SystemExit(main())
