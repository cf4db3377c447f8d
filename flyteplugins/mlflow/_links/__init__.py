"""The ``Mlflow`` link in the Flyte UI: a pure function of the context Flyte renders it with."""
