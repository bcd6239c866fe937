"""Feature specification, the Spark feature job and the serving encoder."""
