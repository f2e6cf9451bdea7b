public enum ResNetDataModule {}
