-- Run once by the postgres image on an empty data directory, as POSTGRES_USER,
-- after it created POSTGRES_DB (Dagster's storage and AstrID's label store).
-- MLflow's tracking server keeps its runs and model registry apart from them.
CREATE DATABASE mlflow;
