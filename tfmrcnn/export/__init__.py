"""Writing a trained model as a deployable artefact (SavedModel)."""
