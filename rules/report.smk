# Placeholder; the rules of this stage are added with the stage.
