"""The two federated jobs and what each trains: the one table the CLI, the job builder, the server and the sites
read (job name -> checkpoint kind -> model class)."""
MAE = "mae_pretrain"
FINETUNE = "ece_finetune"
JOB_KINDS = (MAE, FINETUNE)
CHECKPOINT_KIND = {MAE: "mae", FINETUNE: "dual"}
MODEL_CLASS = {MAE: "ecefl.model.MaskedPretrainer", FINETUNE: "ecefl.model.DualOutputSwinUNETR"}
